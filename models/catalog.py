"""The model files StreamVACE uses: which file, in which ComfyUI model folder, from where, under which licence.

`find` looks for a file in a models directory (ComfyUI's sub-folder names: diffusion_models, vae, vae_approx,
text_encoders, ...) by every name it is known to be distributed under; `missing_report` says exactly what to
put where; `download` fetches a file with huggingface_hub, only when a user asks for it.
"""

import os
import shutil
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFile:
    """One model file (or Hugging Face folder) and where it comes from."""

    key: str
    what: str
    folder: str  # ComfyUI model folder
    names: tuple  # accepted local names, the first is what --download saves
    repo: str = ""  # Hugging Face repo id
    repo_files: tuple = ()  # files in the repo: one for a file, several for a folder
    url: str = ""  # where to get it when it is not on Hugging Face
    licence: str = ""

    @property
    def is_folder(self) -> bool:
        """A Hugging Face model folder rather than a single file."""
        return len(self.repo_files) > 1 or (self.repo and not self.repo_files)

    def source(self) -> str:
        """Where to get it, in words."""
        if self.repo:
            files = ", ".join(self.repo_files) if self.repo_files else "the whole repository"
            return f"Hugging Face {self.repo} ({files})"
        return self.url


CATALOG = {f.key: f for f in (
    ModelFile("dit", "causal Wan2.1 1.3B DiT (LongLive)", "diffusion_models", ("longlive_base.pt",),
              "Efficient-Large-Model/LongLive-1.3B", ("models/longlive_base.pt",),
              licence="see the model card (LongLive code: Apache-2.0)"),
    ModelFile("lora", "LongLive LoRA (merged into the DiT at load)", "loras", ("longlive_lora.pt", "lora.pt"),
              "Efficient-Large-Model/LongLive-1.3B", ("models/lora.pt",),
              licence="see the model card (LongLive code: Apache-2.0)"),
    ModelFile("vace", "VACE module for Wan2.1 1.3B (control)", "diffusion_models",
              ("Wan2_1-VACE_module_1_3B_bf16.safetensors",), "Kijai/WanVideo_comfy",
              ("Wan2_1-VACE_module_1_3B_bf16.safetensors",), licence="Apache-2.0 (Wan2.1 VACE)"),
    ModelFile("vae", "Wan2.1 VAE", "vae", ("wan_2.1_vae.safetensors", "Wan2.1_VAE.pth", "Wan2_1_VAE_bf16.safetensors",
                                          "Wan2_1_VAE_fp32.safetensors"),
              "Comfy-Org/Wan_2.1_ComfyUI_repackaged", ("split_files/vae/wan_2.1_vae.safetensors",),
              licence="Apache-2.0"),
    ModelFile("tiny_vae", "tiny VAE for Wan2.1 (TAEHV, fast decode)", "vae_approx",
              ("taew2_1.pth", "taew2_1.safetensors"), url="https://github.com/madebyollin/taehv (taew2_1.pth)",
              licence="MIT"),
    ModelFile("text_encoder", "umT5-XXL text encoder", "text_encoders",
              ("models_t5_umt5-xxl-enc-bf16.pth", "umt5-xxl-enc-bf16.safetensors", "umt5_xxl_fp16.safetensors",
               "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "umt5-xxl-enc-fp8_e4m3fn.safetensors"),
              "Wan-AI/Wan2.1-T2V-1.3B", ("models_t5_umt5-xxl-enc-bf16.pth",), licence="Apache-2.0"),
    ModelFile("tokenizer", "umT5 tokenizer", "text_encoders", ("umt5-xxl",), "google/umt5-xxl",
              ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model"),
              licence="Apache-2.0"),
    ModelFile("depth", "Depth Anything V2 Small", "depthanything", ("Depth-Anything-V2-Small-hf",),
              "depth-anything/Depth-Anything-V2-Small-hf", ("config.json", "model.safetensors",
                                                              "preprocessor_config.json"), licence="Apache-2.0"),
    ModelFile("pose", "ViTPose (body keypoints)", "vitpose", ("vitpose-base-simple",), "usyd-community/vitpose-base-simple",
              ("config.json", "model.safetensors", "preprocessor_config.json"), licence="Apache-2.0"),
    ModelFile("detector", "RT-DETR person detector (for pose)", "detection", ("rtdetr_r50vd_coco_o365",),
              "PekingU/rtdetr_r50vd_coco_o365", ("config.json", "model.safetensors", "preprocessor_config.json"),
              licence="Apache-2.0"),
)}


def default_models_dir() -> str:
    """$STREAMVACE_MODELS_DIR, else ./models."""
    return os.environ.get("STREAMVACE_MODELS_DIR", os.path.join(os.getcwd(), "models"))


def find(key: str, models_dir: str) -> str:
    """Path of a catalogued file under models_dir/<folder> by any of its known names; None when absent."""
    entry = CATALOG[key]
    for name in entry.names:
        path = os.path.join(models_dir, entry.folder, name)
        if os.path.isdir(path) if entry.is_folder else os.path.isfile(path):
            return path
    return None


def missing_report(keys, models_dir: str) -> str:
    """Which files are missing, which folder each goes into, and where to get it (one line each)."""
    lines = []
    for key in keys:
        entry = CATALOG[key]
        where = os.path.join(models_dir, entry.folder, entry.names[0]) + (os.sep if entry.is_folder else "")
        lines.append(f"  {entry.what}: {where}  <- {entry.source()}  [licence: {entry.licence}]")
    return "\n".join(lines)


def download(key: str, models_dir: str) -> str:
    """Fetch a catalogued file with huggingface_hub into its folder (only ever called on a user's request)."""
    entry = CATALOG[key]
    if not entry.repo:
        raise ValueError(f"{entry.what} is not on Hugging Face: download it from {entry.url} into "
                         f"{os.path.join(models_dir, entry.folder)}")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as error:
        raise ValueError("--download needs huggingface_hub: pip install huggingface_hub") from error
    target = os.path.join(models_dir, entry.folder, entry.names[0])
    if entry.is_folder:
        os.makedirs(target, exist_ok=True)
        for name in entry.repo_files:
            hf_hub_download(entry.repo, name, local_dir=target)
        return target
    staging = os.path.join(models_dir, entry.folder, ".download")
    fetched = hf_hub_download(entry.repo, entry.repo_files[0], local_dir=staging)
    shutil.move(fetched, target)  # the repo's sub-folders (split_files/vae/...) are not ComfyUI's layout
    shutil.rmtree(staging, ignore_errors=True)
    return target
