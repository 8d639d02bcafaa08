"""The weight files the bundled workflows and the README name: which ComfyUI model folder each goes in and where
to download it. The workflows' missing-models metadata, the README's workflow gallery and their tests read this
one table, so a file is described once.

A `name` is what the loader's list shows: a file name, or for a Hugging Face folder model the folder's name
(download the whole repository into models/<directory>/<name>). Nothing here downloads anything.
"""

from dataclasses import dataclass

HF = "https://huggingface.co/"


@dataclass(frozen=True)
class ModelFile:
    """A weight file (or Hugging Face folder) a workflow loads: its models/ folder, download URL and what it is."""

    name: str
    directory: str
    url: str
    what: str
    folder: bool = False  # a whole Hugging Face repository (url is its page), not a single file

    def metadata(self) -> dict:
        """The entry ComfyUI's frontend reads from a node's properties.models for its missing-models dialog."""
        return {"name": self.name, "url": self.url, "directory": self.directory}


def _file(name, directory, repo, path, what):
    return ModelFile(name, directory, f"{HF}{repo}/resolve/main/{path}", what)


KNOWN_FILES = {entry.name: entry for entry in (
    _file("longlive_base.pt", "diffusion_models", "Efficient-Large-Model/LongLive-1.3B", "models/longlive_base.pt",
          "LongLive-1.3B causal Wan2.1 DiT"),
    _file("longlive_lora.pt", "loras", "Efficient-Large-Model/LongLive-1.3B", "models/lora.pt",
          "LongLive's LoRA (models/lora.pt in the LongLive repository; save it as longlive_lora.pt)"),
    _file("self_forcing_dmd.pt", "diffusion_models", "gdhe17/Self-Forcing", "checkpoints/self_forcing_dmd.pt",
          "Self-Forcing causal Wan2.1-1.3B DiT"),
    _file("Wan2_1-VACE_module_1_3B_bf16.safetensors", "diffusion_models", "Kijai/WanVideo_comfy",
          "Wan2_1-VACE_module_1_3B_bf16.safetensors", "Wan2.1 VACE 1.3B module (control)"),
    _file("Wan2.1-1.3b-lora-highresfix-v1_new.safetensors", "loras", "daydreamlive/Wan2.1-1.3b-lora-highresfix",
          "Wan2.1-1.3b-lora-highresfix-v1_new.safetensors", "DiffSynth's Wan2.1-1.3B high-res-fix LoRA"),
    _file("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders", "Comfy-Org/Wan_2.1_ComfyUI_repackaged",
          "split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors", "umT5-XXL text encoder (fp8)"),
    _file("wan_2.1_vae.safetensors", "vae", "Comfy-Org/Wan_2.1_ComfyUI_repackaged",
          "split_files/vae/wan_2.1_vae.safetensors", "Wan2.1 VAE"),
    _file("taew2_1.safetensors", "vae_approx", "Kijai/WanVideo_comfy", "taew2_1.safetensors",
          "TAEHV tiny VAE for Wan2.1"),
    _file("depth_anything_v2_vits.pth", "depthanything", "depth-anything/Depth-Anything-V2-Small",
          "depth_anything_v2_vits.pth", "Depth Anything V2 Small (Apache-2.0)"),
    ModelFile("vitpose-base-simple", "vitpose", f"{HF}usyd-community/vitpose-base-simple",
              "ViTPose base (transformers folder)", folder=True),
    ModelFile("rtdetr_r50vd_coco_o365", "detection", f"{HF}PekingU/rtdetr_r50vd_coco_o365",
              "RT-DETR person detector (transformers folder)", folder=True),
    _file("sam2.1_hiera_tiny.pt", "sam2", "facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt", "SAM2.1 tiny"),
    ModelFile("DreamLite-mobile", "diffusers", f"{HF}carlofkl/DreamLite-mobile/tree/diffusers",
              "DreamLite-mobile, diffusers branch (CC BY-NC 4.0)", folder=True),
    _file("temporal_lllite_step001440.safetensors", "controlnet", "otnl/dreamlite-stream-temporal-lllite-v3",
          "temporal_lllite_step001440.safetensors", "Temporal-LLLite v3 adapter for DreamLite (CC BY-NC 4.0)"),
)}


def known_file(name: str) -> ModelFile:
    """The entry for a file a workflow names; a clear error for one that is not described here."""
    if name not in KNOWN_FILES:
        raise KeyError(f"{name!r} is not in models/known_files.py: add it with its model folder and download URL")
    return KNOWN_FILES[name]
