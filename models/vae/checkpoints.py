"""Recognising VAE weight files, so a loader given the wrong file says what the file looks like.

Both VAE loaders read files with models.checkpoint_io.read_checkpoint, flatten them with
`vae_state_dict` and, when the keys are not theirs, raise a CheckpointError built by `wrong_file`.
"""

import os

import torch

from ..checkpoint_io import SAFETENSORS_SUFFIXES, CheckpointError, key_summary, safetensors_meta

_WRAPPER_KEYS = ("state_dict", "model", "module", "vae")
_PREFIXES = ("first_stage_model.", "vae.", "model.")


def vae_state_dict(checkpoint, path: str) -> dict:
    """A flat {name: tensor} dict from what read_checkpoint returned (unwrapping {"state_dict": ...} and a shared prefix)."""
    while isinstance(checkpoint, dict) and len(checkpoint) == 1 and next(iter(checkpoint)) in _WRAPPER_KEYS:
        checkpoint = next(iter(checkpoint.values()))
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise CheckpointError(f"{path}: expected a dict of weight tensors, found {type(checkpoint).__name__}.")
    tensors = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"{path}: holds no weight tensors at the top level (keys: {key_summary(map(str, checkpoint))}).")
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def describe_checkpoint(state_dict: dict) -> str:
    """A short guess of which model a state dict belongs to, for error messages."""
    keys = set(state_dict)
    if "encoder.conv1.weight" in keys and "conv2.weight" in keys:
        z_dim = state_dict["conv2.weight"].shape[0]
        if any(".downsamples.0.downsamples." in k for k in keys) or z_dim == 48:
            return f"the Wan2.2 VAE (z {z_dim}; for Wan2.2-5B, not Wan2.1)"
        return f"a Wan2.1-layout VAE (z {z_dim}, base width {state_dict['encoder.conv1.weight'].shape[0]})"
    if "encoder.conv_in.weight" in keys and any(k.endswith("norm1.gamma") for k in keys):
        return "a Wan VAE in diffusers layout (AutoencoderKLWan); use the original Wan2.1_VAE.pth / wan_2.1_vae.safetensors"
    if any(k.startswith(("encoder.down.", "decoder.up.")) for k in keys):
        return "a Stable Diffusion / Flux-style image VAE (LDM layout)"
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in keys):
        return "an image VAE in diffusers layout (AutoencoderKL)"
    if "decoder.1.weight" in keys and any(k.endswith(".conv.weight") and k.startswith("decoder.") for k in keys):
        channels = state_dict["decoder.1.weight"].shape[1]
        return f"a tiny video VAE (TAEHV layout, {channels} latent channels)"
    if "decoder.1.weight" in keys or "encoder.1.conv.0.weight" in keys or "decoder.layers.1.weight" in keys:
        return "a tiny image VAE (TAESD layout)"
    if any(".self_attn." in k or k.startswith("diffusion_model.") for k in keys):
        return "a diffusion model (transformer blocks), not a VAE"
    return f"an unrecognised model (keys: {key_summary(keys)})"


def wrong_file(path: str, state_dict: dict, expected: str, fix: str) -> CheckpointError:
    """The CheckpointError for a file that is not the expected kind of VAE."""
    return CheckpointError(
        f"{path}: expected {expected}, but this file looks like {describe_checkpoint(state_dict)}. {fix}")


def vae_file_kind(path: str) -> tuple:
    """What a VAE file holds, from a .safetensors header alone: ("wan_vae" | "tiny_vae" | "other" | "unknown",
    reason). Pickles (.pth) and unreadable headers are "unknown": only loading them tells."""
    if not path.lower().endswith(SAFETENSORS_SUFFIXES):
        return "unknown", f"{os.path.basename(path)}: a PyTorch pickle, whose contents are only known once it is loaded"
    try:
        described = describe_checkpoint(vae_state_dict(safetensors_meta(path), path))
    except CheckpointError as error:
        return "unknown", str(error)
    if described.startswith("a Wan2.1-layout VAE"):
        return "wan_vae", described
    if described.startswith("a tiny video VAE (TAEHV layout, 16 "):
        return "tiny_vae", described
    return "other", described
