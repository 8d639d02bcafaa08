"""The umT5-XXL prompt encoder Wan2.1 was trained with, through transformers' `UMT5EncoderModel`.

Loads every distribution users have: a Hugging Face folder (`google/umt5-xxl`-style, or the `text_encoder/` +
`tokenizer/` folders of a `Wan2.1-*-Diffusers` repo), Wan's own `models_t5_umt5-xxl-enc-bf16.pth` (and kijai's
`umt5-xxl-enc-*.safetensors`, same key names) converted from Wan's T5 key layout, and Comfy-Org's
`umt5_xxl_*.safetensors` (transformers' T5 names, fp8 scaled weights dequantised). The tokenizer comes from
the user's files (tokenizer.json / spiece.model); nothing is downloaded.

What the DiT sees: Wan's T5EncoderModel runs the prompt (whitespace-cleaned, `</s>` appended, truncated to
512 tokens) with padding masked out and keeps only the real tokens; the DiT zero-pads them to 512. ComfyUI's
wan text encoder pads to 512 with an attention mask and zeroes the padded outputs: the same tensor (checked
against ComfyUI 0.8.0 in tests/test_comfyui_host.py). `encode` gives exactly that [1, 512, 4096] tensor (the
real tokens, then zeros). Over 512 tokens the two part: Wan (and this) truncates to 512, `</s>` last; ComfyUI
encodes every token with the others in view, and Wan's DiT then keeps the first 512.
"""

import html
import json
import os
import re

import torch

from ..checkpoint_io import SAFETENSORS_SUFFIXES, CheckpointError, key_summary, read_checkpoint, safetensors_keys

TEXT_LEN = 512
HF_TOKENIZER_REPO = "google/umt5-xxl"
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
# where a tokenizer for a single weight file is looked for, relative to the file's folder
TOKENIZER_DIRS = (".", "umt5-xxl", "google/umt5-xxl", "umt5_xxl_tokenizer", "tokenizer")

# Wan's T5 (Wan-Video/Wan2.1 wan/modules/t5.py, encoder only, per-layer position bias) -> transformers' UMT5.
_FROM_WAN = [
    (r"^token_embedding\.weight$", "shared.weight"),
    (r"^blocks\.(\d+)\.norm1\.weight$", r"encoder.block.\1.layer.0.layer_norm.weight"),
    (r"^blocks\.(\d+)\.attn\.([qkvo])\.weight$", r"encoder.block.\1.layer.0.SelfAttention.\2.weight"),
    (r"^blocks\.(\d+)\.pos_embedding\.embedding\.weight$",
     r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias.weight"),
    (r"^blocks\.(\d+)\.norm2\.weight$", r"encoder.block.\1.layer.1.layer_norm.weight"),
    (r"^blocks\.(\d+)\.ffn\.gate\.0\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wi_0.weight"),  # GELU side
    (r"^blocks\.(\d+)\.ffn\.fc1\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wi_1.weight"),  # linear side
    (r"^blocks\.(\d+)\.ffn\.fc2\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wo.weight"),
    (r"^norm\.weight$", "encoder.final_layer_norm.weight"),
]
_FP8 = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))


def wan_to_umt5_keys(state_dict: dict, path: str = "<state dict>") -> dict:
    """Rename a Wan-layout umT5 encoder state dict to transformers' UMT5EncoderModel names."""
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in _FROM_WAN:
            new, count = re.subn(pattern, replacement, key)
            if count:
                out[new] = value
                break
        else:
            hint = (" It has a shared position bias ('pos_embedding' at the top): that is a T5 encoder, not umT5."
                    if key.startswith("pos_embedding.") else "")
            raise CheckpointError(f"{path}: unexpected key '{key}' for Wan's umT5 encoder layout.{hint}")
    return out


def text_encoder_file_kind(path: str) -> tuple:
    """What a text-encoder file or folder holds, without loading it: ("umt5" | "other" | "unknown", reason).
    A folder is read by its config.json, a .safetensors file by its tensor names; pickles are "unknown"."""
    name = os.path.basename(path)
    if os.path.isdir(path):
        try:
            with open(os.path.join(path, "config.json"), encoding="utf-8") as handle:
                model_type = json.load(handle).get("model_type")
        except (OSError, ValueError):
            return "other", f"{name}: a folder without a readable config.json"
        return ("umt5" if model_type == "umt5" else "other"), f"a transformers '{model_type}' model"
    if not path.lower().endswith(SAFETENSORS_SUFFIXES):
        return "unknown", f"{name}: a PyTorch pickle, whose contents are only known once it is loaded"
    try:
        keys = set(safetensors_keys(path))
    except CheckpointError as error:
        return "unknown", str(error)
    if {"token_embedding.weight", "blocks.0.attn.q.weight", "blocks.0.pos_embedding.embedding.weight"} <= keys:
        return "umt5", "umT5 in Wan's key names"
    blocks = {key.split(".")[2] for key in keys if key.startswith("encoder.block.")}
    biased = {key.split(".")[2] for key in keys if key.endswith("SelfAttention.relative_attention_bias.weight")}
    if blocks and biased == blocks:  # T5 has its position bias in block 0 only
        return "umt5", "umT5 in transformers' key names (a position bias in every block)"
    return "other", f"not a umT5 encoder ({key_summary(sorted(keys))})"


def _umt5_state_dict(path: str) -> dict:
    """A flat state dict in transformers' UMT5 names from a single file in Wan's or transformers' layout."""
    sd = read_checkpoint(path)
    while isinstance(sd, dict) and len(sd) == 1 and isinstance(next(iter(sd.values())), dict):
        sd = next(iter(sd.values()))  # {"state_dict": {...}}-style wrappers
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    sd.pop("spiece_model", None)  # ComfyUI stores its tokenizer inside the file
    if "token_embedding.weight" in sd and "blocks.0.attn.q.weight" in sd:
        sd = wan_to_umt5_keys(sd, path)
    elif any(k.startswith("encoder.block.") for k in sd):
        scaled = {}
        for key, value in sd.items():
            if key.endswith((".scale_weight", ".scale_input")) or key == "scaled_fp8":
                continue
            if value.dtype in _FP8:
                value = value.float()
            scale = sd.get(key[:-len("weight")] + "scale_weight") if key.endswith(".weight") else None
            scaled[key] = value * scale.float() if scale is not None else value
        sd = scaled
        if "shared.weight" not in sd and "encoder.embed_tokens.weight" in sd:
            sd["shared.weight"] = sd["encoder.embed_tokens.weight"]
        sd = {k: v for k, v in sd.items() if k.startswith(("shared.", "encoder."))}  # drop a decoder / lm_head
    else:
        raise CheckpointError(
            f"{path}: not a umT5 text encoder (keys: {key_summary(sd)}). Expected Wan's "
            "models_t5_umt5-xxl-enc-bf16.pth layout ('token_embedding', 'blocks.N.attn.q') or transformers' "
            "('encoder.block.N.layer.0.SelfAttention.q'), e.g. Comfy-Org's umt5_xxl_fp16.safetensors.")
    if "shared.weight" not in sd:
        raise CheckpointError(f"{path}: has no token embedding ('shared.weight' / 'token_embedding.weight'); "
                              "the file is incomplete.")
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    return sd


def umt5_config_from_state_dict(sd: dict, path: str = "<state dict>"):
    """The UMT5Config of a state dict in transformers' names (every size read from the tensors)."""
    from transformers import UMT5Config

    layers = sorted({int(m.group(1)) for k in sd for m in [re.match(r"encoder\.block\.(\d+)\.", k)] if m})
    bias = sd.get("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    if not layers or bias is None:
        raise CheckpointError(f"{path}: no umT5 encoder blocks with a relative position bias in it "
                              f"(keys: {key_summary(sd)}); umT5 has one per layer.")
    vocab, dim = sd["shared.weight"].shape
    buckets, heads = bias.shape
    inner = sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
    ffn = sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0]
    return UMT5Config(vocab_size=vocab, d_model=dim, d_kv=inner // heads, d_ff=ffn, num_layers=len(layers),
                      num_heads=heads, relative_attention_num_buckets=buckets, feed_forward_proj="gated-gelu",
                      tie_word_embeddings=False, is_encoder_decoder=False)


def clean_prompt(text: str) -> str:
    """Wan's `clean='whitespace'`: unescape HTML (twice), fix mojibake when ftfy is installed, collapse spaces."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


def _has_tokenizer(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, name)) for name in TOKENIZER_FILES)


def find_tokenizer(model_path: str, tokenizer_path: str = None) -> str:
    """The tokenizer folder for a text encoder: the one given, else next to / inside the weights."""
    if tokenizer_path:
        if not os.path.isdir(tokenizer_path) or not _has_tokenizer(tokenizer_path):
            raise FileNotFoundError(f"{tokenizer_path}: not a tokenizer folder (needs {' or '.join(TOKENIZER_FILES)})."
                                    f" Download it from Hugging Face '{HF_TOKENIZER_REPO}'.")
        return tokenizer_path
    base = model_path if os.path.isdir(model_path) else os.path.dirname(os.path.abspath(model_path))
    candidates = [os.path.normpath(os.path.join(base, d)) for d in TOKENIZER_DIRS]
    if os.path.isdir(model_path):  # a diffusers repo's text_encoder/ has its tokenizer/ beside it
        candidates.append(os.path.normpath(os.path.join(model_path, "..", "tokenizer")))
    for folder in candidates:
        if os.path.isdir(folder) and _has_tokenizer(folder):
            return folder
    raise FileNotFoundError(
        f"no umT5 tokenizer found for {model_path} (looked for {' or '.join(TOKENIZER_FILES)} in: "
        f"{', '.join(candidates)}). Put the tokenizer files of Hugging Face '{HF_TOKENIZER_REPO}' (tokenizer.json, "
        f"tokenizer_config.json, special_tokens_map.json, spiece.model) into "
        f"{os.path.join(base, 'umt5-xxl')}, or pass the tokenizer folder.")


class UMT5TextEncoder:
    """umT5-XXL encoder + tokenizer: prompt -> [1, 512, 4096] embeddings, the real tokens then zeros."""

    def __init__(self, model, tokenizer, text_len: int = TEXT_LEN):
        self.model, self.tokenizer, self.text_len = model.eval().requires_grad_(False), tokenizer, text_len

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return self.model.shared.weight.device

    @property
    def dim(self) -> int:
        """Width of the embeddings (4096 for umT5-XXL)."""
        return self.model.config.d_model

    def tokens(self, prompt: str) -> torch.Tensor:
        """Token ids [1, n] of a prompt: cleaned, `</s>` appended, at most `text_len` (as Wan tokenizes)."""
        ids = self.tokenizer(clean_prompt(prompt), add_special_tokens=True, truncation=True,
                             max_length=self.text_len, return_tensors="pt").input_ids
        return ids[:, :self.text_len]

    @torch.inference_mode()
    def encode(self, prompt: str) -> torch.Tensor:
        """Embeddings [1, text_len, dim] in float32 on the model's device: the prompt's tokens, then zeros."""
        if not isinstance(prompt, str):
            raise TypeError(f"the prompt must be a string, got {type(prompt).__name__}")
        ids = self.tokens(prompt).to(self.device)
        # no padding at all: a real token's output is the same as with masked padding (keys only are masked)
        hidden = self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.float()
        out = hidden.new_zeros(1, self.text_len, hidden.shape[-1])
        out[:, :hidden.shape[1]] = hidden
        return out


def _load_tokenizer(folder: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as error:  # a spiece.model-only folder without sentencepiece, a broken file, ...
        raise ValueError(f"{folder}: the tokenizer could not be loaded ({type(error).__name__}: {error}). A folder "
                         f"with tokenizer.json (Hugging Face '{HF_TOKENIZER_REPO}') needs no extra package.") from error


def load_text_encoder(path: str, tokenizer_path: str = None, dtype=torch.bfloat16, device="cpu",
                      text_len: int = TEXT_LEN) -> UMT5TextEncoder:
    """Load umT5 from a Hugging Face folder or a single weight file (Wan's or transformers' key names)."""
    from transformers import UMT5EncoderModel

    if os.path.isdir(path) and os.path.isdir(os.path.join(path, "text_encoder")):  # a diffusers repo
        tokenizer_path = tokenizer_path or os.path.join(path, "tokenizer")
        path = os.path.join(path, "text_encoder")
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file or folder. Put the umT5-XXL text encoder there.")
    tokenizer = _load_tokenizer(find_tokenizer(path, tokenizer_path))
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise CheckpointError(f"{path}: a folder without config.json is not a Hugging Face model folder; "
                                  "give the weight file itself or a folder saved with save_pretrained.")
        model = UMT5EncoderModel.from_pretrained(path, dtype=dtype, local_files_only=True)
    else:
        sd = _umt5_state_dict(path)
        config = umt5_config_from_state_dict(sd, path)
        with torch.device("meta"):
            model = UMT5EncoderModel(config)
        sd = {k: v.to(dtype) for k, v in sd.items()}
        result = model.load_state_dict(sd, strict=False, assign=True)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(f"{path}: does not fit a umT5 encoder of {config.num_layers} layers, width "
                                  f"{config.d_model}. Missing: {key_summary(result.missing_keys) or 'none'}. "
                                  f"Unexpected: {key_summary(result.unexpected_keys) or 'none'}.")
        model.encoder.embed_tokens = model.shared
    vocab = model.config.vocab_size
    if len(tokenizer) > vocab:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the encoder only {vocab}: they do not belong "
                         "together (umT5-XXL: 256384).")
    return UMT5TextEncoder(model.to(device), tokenizer, text_len)
