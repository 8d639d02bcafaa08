"""Wan2.1 latent space: the 16 published per-channel mean/std constants, and ComfyUI LATENT conversion.

The engine (DiT, sampler, VACE, both VAEs' encode/decode) works in NORMALISED latents
z = (mu - mean) / std, as Wan, Self-Forcing, LongLive and TAEHV do. ComfyUI's LATENT holds the raw,
un-normalised latents (its Wan21 latent format normalises inside the model), so nodes convert at their
boundary with `latents_to_comfy` / `comfy_to_latents` and nowhere else.
"""

import torch

LATENT_CHANNELS = 16

# Wan-Video/Wan2.1 wan/modules/vae.py WanVAE.__init__ (also ComfyUI latent_formats.Wan21, diffusers AutoencoderKLWan).
WAN21_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)


_CONSTANTS = {}  # device -> (mean, std): built once, so the per-chunk path never copies from the host


def _channel_constants(like: torch.Tensor):
    """Mean and std shaped [1,16,1,1,1] in float32 on the device of `like`."""
    if like.device not in _CONSTANTS:
        shape = (1, LATENT_CHANNELS, 1, 1, 1)
        _CONSTANTS[like.device] = (
            torch.tensor(WAN21_LATENT_MEAN, dtype=torch.float32, device=like.device).view(shape),
            torch.tensor(WAN21_LATENT_STD, dtype=torch.float32, device=like.device).view(shape))
    return _CONSTANTS[like.device]


def check_latents(latents: torch.Tensor, what: str = "latents") -> None:
    """Raise a clear error unless `latents` is a Wan2.1 video latent [B,16,T,h,w]."""
    if not isinstance(latents, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor [B,16,T,H/8,W/8], got {type(latents).__name__}")
    if latents.ndim != 5 or latents.shape[1] != LATENT_CHANNELS:
        raise ValueError(
            f"{what} must be Wan2.1 video latents [batch, 16, frames, height/8, width/8], got shape "
            f"{tuple(latents.shape)}. Image latents ([B,C,H,W]) or latents of another model (SD: 4 channels, "
            "Wan2.2-5B: 48) do not fit: encode the video with a Wan2.1 VAE.")
    if not latents.is_floating_point():
        raise TypeError(f"{what} must be a floating point tensor, got {latents.dtype}")


def normalize_latents(raw: torch.Tensor) -> torch.Tensor:
    """Raw VAE latents -> normalised latents (x - mean) / std, in the input dtype."""
    check_latents(raw, "raw latents")
    mean, std = _channel_constants(raw)
    return ((raw.float() - mean) / std).to(raw.dtype)


def denormalize_latents(latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents -> raw VAE latents x * std + mean, in the input dtype."""
    check_latents(latents)
    mean, std = _channel_constants(latents)
    return (latents.float() * std + mean).to(latents.dtype)


def latents_to_comfy(latents: torch.Tensor) -> dict:
    """Normalised engine latents -> ComfyUI LATENT {"samples": raw float32 [B,16,T,h,w] on the CPU}."""
    return {"samples": denormalize_latents(latents.float()).cpu().contiguous()}


def comfy_to_latents(latent: dict) -> torch.Tensor:
    """ComfyUI LATENT {"samples": raw [B,16,T,h,w]} -> normalised float32 engine latents (same device)."""
    if not isinstance(latent, dict) or "samples" not in latent:
        raise TypeError(f"expected a ComfyUI LATENT (a dict with 'samples'), got {type(latent).__name__}")
    return normalize_latents(latent["samples"].float())
