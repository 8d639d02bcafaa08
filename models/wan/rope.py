"""Wan's 3-D rotary position embedding, with a frame offset so a chunk can sit anywhere in the stream.

The head dimension d is split into time / height / width parts of d - 4*(d//6), 2*(d//6), 2*(d//6) real
channels (44/42/42 at d = 128), each a standard 1-D RoPE with theta = 10000. Channels are rotated as
interleaved (real, imaginary) pairs, as in Wan2.1's `rope_apply`. Angles are computed in float64 from
integer positions: there is no 1024-frame table to run out of, but positions keep growing, so after a long
stream the distance from the sink to the chunk exceeds anything the model saw in training (LongLive
trained up to 240 latent frames; Scope resets the stream at 1024, LongLive-infinity re-applies RoPE).
"""

import torch

from . import triton_kernels

THETA = 10000.0


def axis_channels(head_dim: int) -> tuple:
    """Real channels given to the (time, height, width) axes."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"head_dim must be even and >= 6, got {head_dim}")
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def _axis_frequencies(channels: int, device) -> torch.Tensor:
    return 1.0 / THETA ** (torch.arange(0, channels, 2, dtype=torch.float64, device=device) / channels)


def rope_angles(head_dim: int, frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Rotation angles [len(frames)*height*width, head_dim/2] (float64) for a grid of tokens.

    `frames` holds the temporal position of each latent frame (an offset chunk is frames = start + arange(F)).
    """
    t_ch, h_ch, w_ch = axis_channels(head_dim)
    device = frames.device
    frames = frames.to(torch.float64)
    t = frames[:, None] * _axis_frequencies(t_ch, device)[None]
    h = torch.arange(height, dtype=torch.float64, device=device)[:, None] * _axis_frequencies(h_ch, device)[None]
    w = torch.arange(width, dtype=torch.float64, device=device)[:, None] * _axis_frequencies(w_ch, device)[None]
    f_n, h_n, w_n = len(frames), height, width
    grid = torch.cat([
        t[:, None, None, :].expand(f_n, h_n, w_n, -1),
        h[None, :, None, :].expand(f_n, h_n, w_n, -1),
        w[None, None, :, :].expand(f_n, h_n, w_n, -1),
    ], dim=-1)
    return grid.reshape(f_n * h_n * w_n, head_dim // 2)


class RotaryTable:
    """cos/sin of the rotation angles for one token grid, ready to apply to [B, L, heads, head_dim]."""

    def __init__(self, angles: torch.Tensor):
        self.cos = angles.cos().float()[None, :, None, :]
        self.sin = angles.sin().float()[None, :, None, :]

    @classmethod
    def from_tables(cls, cos: torch.Tensor, sin: torch.Tensor) -> "RotaryTable":
        """A table over given cos/sin buffers [1, L, 1, head_dim/2] (static buffers of a CUDA graph)."""
        table = cls.__new__(cls)
        table.cos, table.sin = cos, sin
        return table

    @classmethod
    def for_grid(cls, head_dim, start_frame, num_frames, height, width, device=None):
        """The table for `num_frames` latent frames starting at temporal position `start_frame`."""
        frames = torch.arange(start_frame, start_frame + num_frames, device=device)  # built on the device: no copy
        return cls(rope_angles(head_dim, frames, height, width))

    def apply_to_keys(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate the keys of self-attention (a cache that rotates keys itself leaves them raw; see long_horizon)."""
        return self.apply(x)

    def plain(self) -> "RotaryTable":
        """This table rotating queries and keys alike (for attention without a cache, e.g. the VACE blocks)."""
        return self

    def apply_normed(self, x: torch.Tensor, norm: torch.nn.RMSNorm, heads: int) -> torch.Tensor:
        """Rotate norm(x) split into heads: [B, L, width] -> [B, L, heads, head_dim]. Inside compiled regions on
        CUDA one Triton kernel does both (rounded once); elsewhere, and where a gradient is wanted (the kernel has
        no backward), the two steps run as the reference does."""
        weight = norm.weight
        wants_grad = torch.is_grad_enabled() and (x.requires_grad or weight is not None and weight.requires_grad)
        fused = weight is not None and not wants_grad and triton_kernels.norm_rope_fits(x, self.cos, self.sin, heads)
        if torch.compiler.is_compiling() and fused:
            eps = norm.eps if norm.eps is not None else torch.finfo(torch.float32).eps  # as rms_norm in float32
            return triton_kernels.rms_norm_rope(x, norm.weight, eps, self.cos, self.sin, heads)
        return self.apply(norm(x).unflatten(-1, (heads, -1)))

    def apply_normed_to_keys(self, x: torch.Tensor, norm: torch.nn.RMSNorm, heads: int) -> torch.Tensor:
        """apply_to_keys(norm(x) split into heads), fused like apply_normed where keys rotate like queries."""
        if type(self).apply_to_keys is not RotaryTable.apply_to_keys:  # a table that treats keys its own way
            return self.apply_to_keys(norm(x).unflatten(-1, (heads, -1)))
        return self.apply_normed(x, norm, heads)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate x [B, L, heads, head_dim] (computed in float32, returned in x's dtype)."""
        pairs = x.float().unflatten(-1, (-1, 2))
        real, imag = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack((real * self.cos - imag * self.sin, real * self.sin + imag * self.cos), dim=-1)
        return rotated.flatten(-2).to(x.dtype)
