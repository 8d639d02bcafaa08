"""Checks a stream runs on its settings and inputs before anything changes: a run that fails them never
touches the stream it names (its KV cache, prompt, controls), and its message names the problem and the fix.

Everything here runs once per call on the call's inputs (at most one host sync per tensor), never inside
the chunk loop.
"""

import torch

from ..checks import check_values, value_summary
from ..memory import check_fits
from .kv_cache import CachePolicy
from .sampler import sigma_schedule

SIZE_MULTIPLE = 16  # the VAE's 8x8 times the DiT's 2x2 patches
VAE_SPATIAL = 8
ACTIVATION_COPIES = 8  # float32 copies of the chunk's hidden states alive at once in a block (x, norm, q, k, v, ...)


def _nearest_sizes(value) -> str:
    lower = max(SIZE_MULTIPLE, int(value) // SIZE_MULTIPLE * SIZE_MULTIPLE) if isinstance(value, int) else 480
    return f"{lower} or {lower + SIZE_MULTIPLE}"


def check_config(config) -> None:
    """Raise ValueError naming the bad setting of a StreamConfig, and a value that works."""
    c = config
    for name in ("height", "width"):
        value = getattr(c, name)
        if not isinstance(value, int) or value <= 0 or value % SIZE_MULTIPLE:
            raise ValueError(f"height and width must be positive multiples of {SIZE_MULTIPLE} (the VAE's 8 x the DiT's "
                             f"2x2 patches), but {name} is {value!r}: use e.g. {_nearest_sizes(value)}")
    if not isinstance(c.chunk_frames, int) or c.chunk_frames < 1:
        raise ValueError(f"chunk_frames must be a positive number of latent frames (3 in every released model), "
                         f"got {c.chunk_frames!r}")
    if not isinstance(c.batch, int) or c.batch < 1:
        raise ValueError(f"batch must be at least 1, got {c.batch!r}")
    if not isinstance(c.policy, CachePolicy):
        raise ValueError(f"policy must be a CachePolicy (see kv_cache.cache_policy('longlive')), got {c.policy!r}")
    if c.policy.window_frames is None and (not isinstance(c.max_frames, int) or c.max_frames < c.chunk_frames):
        raise ValueError(f"the full-history policy needs max_frames >= chunk_frames ({c.chunk_frames}), "
                         f"got {c.max_frames!r}")
    if not isinstance(c.seed, int) or c.seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {c.seed!r}")
    try:
        sigma_schedule(c.steps, c.warp_steps, c.shift)
    except (TypeError, ValueError) as error:
        raise ValueError(f"steps must be decreasing timesteps in (0, 1000] such as (1000, 750, 500, 250): "
                         f"{error}") from None


def stream_memory(model, config) -> dict:
    """Bytes a stream of this model and config allocates, by part (an estimate: the buffers exactly, the
    working memory of one forward roughly)."""
    c, mc = config, model.config
    tokens_per_frame = (c.height // VAE_SPATIAL // mc.patch_size[1]) * (c.width // VAE_SPATIAL // mc.patch_size[2])
    if c.policy.window_frames is None:
        capacity = c.policy.sink_frames + max(0, c.max_frames - c.policy.sink_frames)
    else:
        capacity = c.policy.sink_frames + c.policy.window_frames + c.chunk_frames
    element = model.head.head.weight.element_size()
    kv = 2 * mc.num_layers * c.batch * capacity * tokens_per_frame * mc.dim * element
    latent_frame = c.batch * mc.in_dim * (c.height // VAE_SPATIAL) * (c.width // VAE_SPATIAL) * 4
    chunk_tokens = c.batch * c.chunk_frames * tokens_per_frame
    working = chunk_tokens * (ACTIVATION_COPIES * mc.dim + mc.ffn_dim) * 4
    if mc.num_vace_blocks:
        working += mc.num_vace_blocks * chunk_tokens * mc.dim * 4  # the hints kept for the base blocks
    return {"KV cache": kv, "latent history": capacity * latent_frame, "working memory": working}


def check_memory(model, config, reclaimable: int = 0) -> None:
    """Refuse a stream that cannot fit in the free memory of the model's device, before allocating it."""
    parts = stream_memory(model, config)
    check_fits(sum(parts.values()), model.head.head.weight.device,
               f"a {config.width}x{config.height} stream (batch {config.batch}, {model.config.num_layers} layers)",
               "Lower width / height, use the motionstream cache policy (fewer cached frames), free other streams "
               "(Free Streams node), or use a device with more memory.", reclaimable, parts)


def check_prompt(text, model, batch: int) -> None:
    """Raise ValueError unless `text` is a finite [1 or batch, L, text_dim] embedding for this model."""
    text_dim = model.config.text_dim
    if not isinstance(text, torch.Tensor):
        raise ValueError(f"the prompt must be a tensor of text embeddings [1, tokens, {text_dim}], "
                         f"got {type(text).__name__}")
    if text.ndim != 3:
        raise ValueError(f"the prompt must be text embeddings [batch, tokens, {text_dim}] (3 dimensions), got shape "
                         f"{tuple(text.shape)}; add the batch axis (text[None]) to a [tokens, {text_dim}] embedding")
    if text.shape[-1] != text_dim:
        raise ValueError(f"the prompt embeddings have {text.shape[-1]} features per token but this model takes "
                         f"{text_dim} (umT5-XXL for Wan2.1): encode the prompt with the Wan text encoder (Load CLIP, "
                         "type wan)")
    if text.shape[1] == 0:
        raise ValueError("the prompt embedding has no tokens; encode a (possibly empty) prompt with the text encoder")
    if text.shape[0] not in (1, batch):
        raise ValueError(f"the prompt has a batch of {text.shape[0]} embeddings but the stream generates a batch of "
                         f"{batch}: give one prompt [1, tokens, {text_dim}] or one per stream")
    if not text.is_floating_point() or not value_summary(text)[0]:
        raise ValueError("the prompt embedding contains NaN or infinite values (or is not floating point); "
                         "check the text encoder and the nodes between it and the sampler")


def check_chunks(chunks) -> None:
    """Raise ValueError unless `chunks` is a positive integer."""
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise ValueError(f"chunks must be a positive whole number of chunks to generate (1 or more), got {chunks!r}")


_LAYOUTS = {  # name: (channels, dimensions, layout in words, value range)
    "frames": (3, 4, "[3, frames, height, width]", (-1.0, 1.0)),
    "mask": (1, 4, "[1, frames, height, width]", (0.0, 1.0)),
    "references": (3, 4, "[count, 3, height, width]", (-1.0, 1.0)),
    "first_frame": (3, 3, "[3, height, width]", (-1.0, 1.0)),
    "last_frame": (3, 3, "[3, height, width]", (-1.0, 1.0)),
}


def check_control_input(name: str, value: torch.Tensor) -> None:
    """Raise ValueError unless one input of a VACE Control has its layout and value range."""
    channels, ndim, layout, (low, high) = _LAYOUTS[name]
    what = f"the control's {name}"
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{what} must be a tensor {layout}, got {type(value).__name__}")
    if value.numel() == 0:
        raise ValueError(f"{what} is empty (shape {tuple(value.shape)}); give at least one frame or leave it out")
    channel_axis = 1 if name == "references" else 0
    if name == "references" and value.ndim == 3:
        raise ValueError(f"{what} is a single image {tuple(value.shape)}; references are {layout}: add the count "
                         "axis (images[None])")
    if value.ndim == ndim - 1:
        fix = ("add the channel axis: mask[None] for a [frames, height, width] mask" if name == "mask" else
               f"add the channel axis ({layout})")
        raise ValueError(f"{what} has no channel axis (shape {tuple(value.shape)}, expected {layout}); {fix}")
    if value.ndim != ndim:
        raise ValueError(f"{what} must be {layout}, got {value.ndim} dimensions {tuple(value.shape)}")
    if value.shape[channel_axis] != channels:
        if value.shape[-1] == channels or (name == "mask" and value.shape[-1] in (1, 3)):
            raise ValueError(f"{what} is channels-last (shape {tuple(value.shape)}); the engine takes channels first, "
                             f"{layout}: permute it (ComfyUI IMAGE [T, H, W, 3] -> x.permute(3, 0, 1, 2) * 2 - 1)")
        raise ValueError(f"{what} must have {channels} channel(s) at axis {channel_axis} ({layout}), "
                         f"got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        raise ValueError(f"{what} must be floating point in [{low:g}, {high:g}], got {value.dtype}; "
                         + ("convert 8-bit frames with x / 127.5 - 1" if low < 0 else "convert with x / 255"))
    fix = ("the engine takes video in [-1, 1] (ComfyUI IMAGE in [0, 1] converts as x * 2 - 1)" if low < 0 else
           "white (1) = generate, black (0) = keep; soft masks are cut at 0.5")
    check_values(value, what, low, high, fix)
