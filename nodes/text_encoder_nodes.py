"""Nodes for StreamVACE's own umT5-XXL text encoder: use without ComfyUI's Load CLIP, same CONDITIONING out."""

import os

from ..models.wan.text_encoder import TOKENIZER_FILES, load_text_encoder, text_encoder_file_kind
from . import host
from .model_lists import UNINSPECTED_NOTE, files_of_kind
from .model_cache import cached, file_key
from .types import DTYPE_INPUT, DTYPES

TEXT_ENCODER_TYPE = "STREAMVACE_TEXT_ENCODER"
FOLDER = "text_encoders"


def _tokenizer_dirs() -> list:
    """Sub-folders of text_encoders holding a tokenizer (tokenizer.json or spiece.model)."""
    names = []
    for root in host.model_folder_paths(FOLDER):
        for directory, _, files in os.walk(root, followlinks=True):
            if any(name in files for name in TOKENIZER_FILES):
                names.append(os.path.relpath(directory, root))
    return sorted(set(names))


def _umt5_choices() -> list:
    """Files and folders of text_encoders that look like umT5 (or cannot be told without loading)."""
    names = sorted(set(host.model_files(FOLDER)) | set(host.model_dirs(FOLDER)))
    return files_of_kind(FOLDER, ("umt5",), text_encoder_file_kind, names=names)


class StreamVACELoadTextEncoder:
    """Load umT5-XXL (Wan2.1's text encoder) with its tokenizer from the 'text_encoders' model folder."""

    DESCRIPTION = ("Loads umT5-XXL through transformers from models/text_encoders: Wan's "
                   "models_t5_umt5-xxl-enc-bf16.pth, kijai's umt5-xxl-enc-*.safetensors, Comfy-Org's umt5_xxl_*.safetensors "
                   "or a Hugging Face folder. The tokenizer (tokenizer.json of google/umt5-xxl) comes from a folder "
                   "next to the weights, e.g. text_encoders/umt5-xxl/. Nothing is downloaded.")
    CATEGORY = "StreamVACE/loaders"
    RETURN_TYPES = (TEXT_ENCODER_TYPE,)
    RETURN_NAMES = ("text_encoder",)
    OUTPUT_TOOLTIPS = ("umT5-XXL and its tokenizer, for StreamVACE Text Encode.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        """Weights (file or folder), tokenizer folder, precision."""
        return {"required": {
            "text_encoder_name": (_umt5_choices(), {"tooltip": "umT5-XXL weights: a file in Wan's or transformers' "
                                                               "key names, or a Hugging Face folder. Other text "
                                                               "encoders (CLIP, T5) are not listed; "
                                                               + UNINSPECTED_NOTE}),
            "tokenizer": (["auto"] + _tokenizer_dirs(), {"tooltip": "auto: a tokenizer folder next to the weights "
                                                                    "(umt5-xxl/, google/umt5-xxl/, tokenizer/)."}),
            "dtype": DTYPE_INPUT,
        }}

    def load(self, text_encoder_name, tokenizer, dtype):
        """Read the encoder onto ComfyUI's device (memoised per file, tokenizer and precision)."""
        path = host.model_path(FOLDER, text_encoder_name)
        tokenizer_path = None if tokenizer == "auto" else host.model_path(FOLDER, tokenizer)
        device = host.torch_device()
        key = ("umt5", file_key(path), tokenizer_path, dtype, str(device))
        return (cached(key, lambda: load_text_encoder(path, tokenizer_path, dtype=DTYPES[dtype], device=device)),)


class StreamVACETextEncode:
    """Encode a prompt with StreamVACE's umT5-XXL into ComfyUI CONDITIONING for the Stream Sampler."""

    DESCRIPTION = ("The prompt as Wan2.1 sees it: umT5-XXL embeddings of its tokens (whitespace cleaned, </s> "
                   "appended, at most 512), zero-padded to 512 tokens, [1, 512, 4096]: the same tensor as "
                   "CLIPTextEncode with a wan-type CLIP.")
    CATEGORY = "StreamVACE/conditioning"
    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("For the Stream Sampler's positive input (or any node taking Wan text conditioning).",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        """The loaded encoder and the prompt."""
        return {"required": {
            "text_encoder": (TEXT_ENCODER_TYPE, {"tooltip": "From StreamVACE Load Text Encoder."}),
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": "What the video shows."}),
        }}

    def encode(self, text_encoder, text):
        """[[embeddings [1, 512, 4096] float32 on the CPU, {}]]: ComfyUI's CONDITIONING layout."""
        return ([[text_encoder.encode(text).cpu(), {}]],)


NODE_CLASS_MAPPINGS = {
    "StreamVACELoadTextEncoder": StreamVACELoadTextEncoder,
    "StreamVACETextEncode": StreamVACETextEncode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "StreamVACELoadTextEncoder": "StreamVACE Load Text Encoder (umT5)",
    "StreamVACETextEncode": "StreamVACE Text Encode",
}
