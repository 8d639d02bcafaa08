"""Tiny random VAEs in the real key layouts, saved in the real file formats, for the VAE tests."""

import math

import torch
from safetensors.torch import save_file

from streamvace.models.vae.tiny_vae import TinyVAE
from streamvace.models.vae.wan_vae import WanVAE, WanVAEConfig

TINY_WAN_DIM = 8
TINY_TAE_WIDTHS = dict(encoder_width=8, decoder_widths=(16, 8, 8, 8))


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random (norm gains around 1, small biases, unit-gain weights): no constant outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("gamma"):
                param.copy_(torch.rand(param.shape, generator=generator) + 0.5)
            elif param.ndim == 1:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(param[0].numel()))
    return module


def wan_vae_state_dict(seed: int = 0, dim: int = TINY_WAN_DIM) -> dict:
    """A random Wan2.1-layout VAE state dict (194 tensors, original key names) of base width `dim`."""
    vae = randomize_(WanVAE(WanVAEConfig(dim=dim)), seed)
    with torch.no_grad():
        vae.decoder.head[2].weight.mul_(0.3)  # keep most outputs inside the [-1, 1] clamp
    return {k: v.clone() for k, v in vae.state_dict().items()}


def tiny_vae_state_dict(seed: int = 0, **widths) -> dict:
    """A random TAEHV-layout tiny VAE state dict (taew2_1 key names) with small widths."""
    vae = randomize_(TinyVAE(**(widths or TINY_TAE_WIDTHS)), seed)
    with torch.no_grad():
        vae.decoder[22].weight.mul_(0.5)
        vae.decoder[22].bias.fill_(0.5)  # keep most outputs inside TAEHV's [0, 1] clamp
    return {k: v.clone() for k, v in vae.state_dict().items()}


def save_weights(state_dict: dict, path) -> str:
    """Save as .safetensors or .pth (torch.save of the flat dict, like the released files)."""
    path = str(path)
    if path.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
    else:
        torch.save(state_dict, path)
    return path


def random_video(frames: int, height: int = 32, width: int = 48, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A smooth-ish random video [B,3,T,H,W] in [-1,1]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, frames, height // 8, width // 8, generator=generator)
    fine = torch.rand(batch, 3, frames, height, width, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(frames, height, width), mode="trilinear")
    return (0.7 * smooth + 0.3 * fine) * 2 - 1


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||."""
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()
