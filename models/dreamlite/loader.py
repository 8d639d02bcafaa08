"""Load DreamLite-mobile from the diffusers-format folder users download.

That folder is `carlofkl/DreamLite-mobile` at revision `diffusers` (the `main` branch keeps the original
ByteDance layout): model_index.json plus unet/, vae/ (TAESDXL, AutoencoderTiny), scheduler/
(FlowMatchEulerDiscreteScheduler), text_encoder/ (Qwen3-VL-2B), tokenizer/ and processor/.
Weights licence: CC BY-NC 4.0 (non-commercial use only).
"""

import json
import os
from dataclasses import dataclass

import torch

from ..checkpoint_io import CheckpointError, check_finite_weights
from .text_encoder import EditPromptEncoder, VisionPatching

LICENCE_NOTE = "DreamLite weights are licensed CC BY-NC 4.0 (non-commercial use only)."
DOWNLOAD_HINT = ("Download the diffusers layout: huggingface-cli download carlofkl/DreamLite-mobile "
                 "--revision diffusers --local-dir <models>/diffusers/DreamLite-mobile")

# upstream DreamLite modules/dreamlite.json: 389.97 M parameters, 108 LLLite hooks (38 in down_blocks, 16 in mid)
MOBILE_UNET_CONFIG = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "act_fn": "silu", "flip_sin_to_cos": True,
    "freq_shift": 0, "norm_num_groups": 32, "norm_eps": 1e-05,
    "down_block_types": ["CrossAttnDownRemoveSelfAttnBlock2D", "CrossAttnDownRemoveSelfAttnBlock2D",
                         "CrossAttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpRemoveSelfAttnBlock2DV1", "UpBlock2D"],
    "block_out_channels": [256, 512, 896], "attention_head_dim": [4, 8, 14], "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 4], "cross_attention_dim": 2304, "encoder_hid_dim": 2048,
    "encoder_hid_dim_type": "text_proj_rms", "addition_embed_type": "time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 512, "num_kv_heads": 1, "num_mid_layers": 1, "qk_norm": "rms_norm",
    "ff_mult": 3, "use_linear_projection": True, "use_sep_conv": True,
}

_WEIGHT_FILES = {
    "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
             "diffusion_pytorch_model.bin"),
    "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "text_encoder": ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"),
}


@dataclass
class DreamLiteModels:
    """The loaded parts of DreamLite-mobile, ready for the stylize engine."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler: object
    prompt_encoder: EditPromptEncoder
    folder: str = ""

    @property
    def device(self) -> torch.device:
        """Where the U-Net runs."""
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The U-Net's compute dtype."""
        return next(self.unet.parameters()).dtype


def _tokenizer_folder(folder: str):
    for name in ("tokenizer", "processor"):
        candidate = os.path.join(folder, name)
        if any(os.path.isfile(os.path.join(candidate, f)) for f in ("tokenizer.json", "vocab.json")):
            return candidate
    return None


def dreamlite_folder_kind(path: str) -> tuple:
    """What a diffusers pipeline folder holds, from its model_index.json: ("dreamlite_mobile" | "other" | "unknown",
    reason); "dreamlite_mobile" is the pipeline the stylize engine loads."""
    try:
        with open(os.path.join(path, "model_index.json")) as handle:
            pipeline_class = json.load(handle).get("_class_name", "")
    except (OSError, ValueError, AttributeError) as error:
        return "unknown", f"{path}: model_index.json unreadable ({error})"
    if pipeline_class == "DreamLiteMobilePipeline":
        return "dreamlite_mobile", "DreamLite-mobile"
    return "other", f"a {pipeline_class or 'nameless'} pipeline"


def check_dreamlite_folder(folder: str) -> None:
    """Raise a CheckpointError naming what is wrong with a DreamLite-mobile folder, and how to fix it."""
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: no such folder. {DOWNLOAD_HINT}")
    index_path = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index_path):
        raise CheckpointError(f"{folder}: no model_index.json, so this is not a diffusers-format pipeline folder "
                              f"(the 'main' branch of the Hub repo has the original layout). {DOWNLOAD_HINT}")
    with open(index_path) as handle:
        pipeline_class = json.load(handle).get("_class_name", "")
    if pipeline_class == "DreamLitePipeline":
        raise CheckpointError(f"{folder} holds DreamLite-base (28 steps with guidance); the stylize engine needs "
                              f"the distilled DreamLite-mobile. {DOWNLOAD_HINT}")
    if pipeline_class != "DreamLiteMobilePipeline":
        raise CheckpointError(f"{folder}: model_index.json names {pipeline_class or 'no pipeline'}, not "
                              f"DreamLiteMobilePipeline. {DOWNLOAD_HINT}")
    for part, names in _WEIGHT_FILES.items():
        sub = os.path.join(folder, part)
        if not os.path.isfile(os.path.join(sub, "config.json")):
            raise CheckpointError(f"{folder}: the {part} is missing ({sub}/config.json not found). {DOWNLOAD_HINT}")
        present = [os.path.join(sub, n) for n in names if os.path.isfile(os.path.join(sub, n))]
        if not present:
            raise CheckpointError(f"{folder}: no {part} weights in {sub} (expected one of {', '.join(names)}); "
                                  f"the download is incomplete. {DOWNLOAD_HINT}")
        if os.path.getsize(present[0]) == 0:
            raise CheckpointError(f"{present[0]}: the file is empty (an interrupted download?). Download it again.")
    if not os.path.isfile(os.path.join(folder, "scheduler", "scheduler_config.json")):
        raise CheckpointError(f"{folder}: scheduler/scheduler_config.json is missing. {DOWNLOAD_HINT}")
    if _tokenizer_folder(folder) is None:
        raise CheckpointError(f"{folder}: no tokenizer for the Qwen3-VL text encoder (tokenizer/ or processor/ with "
                              f"tokenizer.json or vocab.json). {DOWNLOAD_HINT}")


def _load(part: str, folder: str, loader):
    try:
        return loader()
    except CheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(f"{os.path.join(folder, part)}: could not load the {part} "
                              f"({type(error).__name__}: {error}). The files are corrupt or from another "
                              f"model; {DOWNLOAD_HINT}") from error


def load_dreamlite(folder: str, device="cpu", dtype: torch.dtype = torch.bfloat16) -> DreamLiteModels:
    """Load every part of a DreamLite-mobile diffusers folder onto `device` in `dtype`, in eval mode."""
    from diffusers import AutoencoderTiny, DreamLiteUNetModel, FlowMatchEulerDiscreteScheduler
    from transformers import AutoTokenizer, Qwen3VLModel

    check_dreamlite_folder(folder)
    # low_cpu_mem_usage=False: diffusers' default needs `accelerate` and prints a warning without it; the U-Net
    # (0.39 B) and TAESDXL (2.4 M) are small enough to build on the CPU first (about a second, once per load),
    # which is not worth one more dependency in ComfyUI's environment
    unet = _load("unet", folder, lambda: DreamLiteUNetModel.from_pretrained(
        folder, subfolder="unet", torch_dtype=dtype, low_cpu_mem_usage=False))
    vae = _load("vae", folder, lambda: AutoencoderTiny.from_pretrained(
        folder, subfolder="vae", torch_dtype=dtype, low_cpu_mem_usage=False))
    scheduler = _load("scheduler", folder, lambda: FlowMatchEulerDiscreteScheduler.from_pretrained(
        folder, subfolder="scheduler"))
    # the bare Qwen3VLModel: DreamLite reads the last hidden state, so the 151936-way lm_head is never loaded
    text = _load("text_encoder", folder, lambda: Qwen3VLModel.from_pretrained(
        os.path.join(folder, "text_encoder"), dtype=dtype, attn_implementation="sdpa"))
    tokenizer_dir = _tokenizer_folder(folder)
    tokenizer = _load("tokenizer", folder, lambda: AutoTokenizer.from_pretrained(tokenizer_dir))
    patching = VisionPatching.from_folder(os.path.join(folder, "processor"))
    unet_width = unet.config.encoder_hid_dim
    if text.config.text_config.hidden_size != unet_width:
        raise CheckpointError(f"{folder}: the text encoder's hidden size {text.config.text_config.hidden_size} "
                              f"does not match the U-Net's encoder_hid_dim {unet_width}; the parts come from "
                              f"different models. {DOWNLOAD_HINT}")
    for part, module in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        module.to(device).eval().requires_grad_(False)
        check_finite_weights(module.named_parameters(), os.path.join(folder, part))
    return DreamLiteModels(unet, vae, scheduler, EditPromptEncoder(text, tokenizer, patching), folder)
