"""Building blocks of the Wan2.1 causal video VAE, in the module layout of Wan-AI's Wan2.1_VAE.pth.

Every layer that looks back in time (a causal conv with temporal kernel 3, the temporal down/upsamplers)
owns one cache slot, numbered once at construction (`number_cache_slots`). A forward pass receives a
CacheStep: it reads the slot the previous pass left, and writes the frames the next pass will need.

Causality is that of one causal conv over the whole clip with 2 zero frames in front: feeding the clip
in pieces with the slots in between gives the same result. Two exceptions come from the Wan design and
are reproduced exactly: on the first pass (frame 0 / latent 0 alone) the temporal downsampler passes
its frame through, and the temporal upsampler skips its time conv, so frame 0 <-> latent 0 one to one.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import vae_kernels
from .vae_kernels import rms_normalize

CONTEXT_FRAMES = 2  # a temporal kernel of 3 looks at the two previous frames


def frames_layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format that keeps x's layout: channels_last(_3d) when x is stored channels-last."""
    if x.dim() == 5:
        return torch.channels_last_3d if _channels_last(x, torch.channels_last_3d) else torch.contiguous_format
    return torch.channels_last if _channels_last(x, torch.channels_last) else torch.contiguous_format


def _channels_last(x: torch.Tensor, layout: torch.memory_format) -> bool:
    # a tensor with one channel is both contiguous and channels-last; it keeps the plain layout
    return x.shape[1] > 1 and x.is_contiguous(memory_format=layout) and not x.is_contiguous()


class CausalConv3d(nn.Conv3d):
    """3-D conv padded in time at the front only (2 frames for kernel 3), continuing from its cache slot."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        kernel = kernel_size if isinstance(kernel_size, tuple) else (kernel_size,) * 3
        pad = padding if isinstance(padding, tuple) else (padding,) * 3
        super().__init__(in_channels, out_channels, kernel, stride=stride, padding=(0, pad[1], pad[2]))
        self.front_pad = 2 * pad[0]
        self.looks_back = self.front_pad > 0  # needs a cache slot
        self.cache_slot = None  # set by number_cache_slots

    def forward(self, x, step=None):
        """Convolve x [B,C,T,H,W]; with a CacheStep, prepend the cached frames and cache the newest ones."""
        if self.front_pad == 0:
            return super().forward(x)
        previous = None if step is None else step.read(self.cache_slot)
        if previous is not None:
            x = torch.cat([previous, x], dim=2)
        if step is not None:
            step.write(self.cache_slot, x[:, :, -CONTEXT_FRAMES:].clone())
        missing = self.front_pad - (0 if previous is None else previous.shape[2])
        if missing > 0:
            x = F.pad(x, (0, 0, 0, 0, missing, 0))
        return super().forward(x)

    def forward_normed(self, x, norm: "RMSNorm", step=None, input_bias=None, add_bias: bool = True):
        """self(SiLU(norm(x + input_bias)), step), with the normalised frames written straight after the cached
        ones in the conv's input (no concatenation pass); add_bias=False leaves this conv's bias to the caller."""
        previous = None if step is None else step.read(self.cache_slot)
        cached = 0 if previous is None else previous.shape[2]
        front = max(self.front_pad, cached)  # zero frames where the cache has fewer than the kernel looks back
        b, c, t, h, w = x.shape
        frames = torch.empty((b, c, front + t, h, w), dtype=x.dtype, device=x.device,
                             memory_format=frames_layout(x))
        frames[:, :, :front - cached].zero_()
        if cached:
            frames[:, :, front - cached:front].copy_(previous)
        vae_kernels.norm_silu(x, norm.gamma * norm.scale, input_bias, out=frames[:, :, front:])
        if step is not None:  # the frames without the zero padding, as forward() caches them
            step.write(self.cache_slot, frames[:, :, front - cached:][:, :, -CONTEXT_FRAMES:].clone())
        return self._conv_forward(frames, self.weight, self.bias if add_bias else None)


class RMSNorm(nn.Module):
    """x * sqrt(C) * gamma / ||x||_2 over the channel axis (Wan's RMS_norm; the norm is reduced in float32)."""

    def __init__(self, dim: int, images: bool = False):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))

    fused = False  # WanVAE.use_fast_kernels: the convs after it take SiLU(norm(x)) in one fused pass

    def forward(self, x):
        """Normalise over dim 1."""
        return rms_normalize(x, self.gamma * self.scale)

    def then_silu_conv(self, conv: CausalConv3d, x, step):
        """conv(SiLU(self(x)), step), the sequence every residual block and head applies."""
        if self.fused:
            return conv.forward_normed(x, self, step)
        return conv(F.silu(self(x)), step)


class ResidualBlock(nn.Module):
    """RMSNorm-SiLU-CausalConv3d twice, plus a 1x1x1 shortcut when the width changes (`residual.{0,2,3,6}`)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim), nn.SiLU(), nn.Dropout(0.0), CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x, step=None):
        """x + residual(x), with both causal convs continuing from their slots."""
        norm1, _, conv1, norm2, _, _, conv2 = self.residual
        if norm1.fused:  # conv biases folded into the next fused pass: norm2's input, then the residual sum
            h = conv1.forward_normed(x, norm1, step, add_bias=False)
            h = conv2.forward_normed(h, norm2, step, input_bias=conv1.bias, add_bias=False)
            return vae_kernels.add_bias_residual(h, conv2.bias, self.shortcut(x))
        h = norm1.then_silu_conv(conv1, x, step)
        h = norm2.then_silu_conv(conv2, h, step)
        return h + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame separately (no temporal state)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x, step=None):
        """x + proj(attention(norm(x))) frame by frame."""
        b, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(frames)).reshape(b * t, 1, c * 3, h * w).transpose(2, 3)
        q, k, v = qkv.chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())
        out = self.proj(out.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w))
        return x + out.view(b, t, c, h, w).permute(0, 2, 1, 3, 4)


class NearestUpsample2x(nn.Module):
    """Nearest-exact 2x spatial upsampling of [N,C,H,W] (no weights; keeps `resample.1` at index 1)."""

    def forward(self, x):
        """Upsample height and width by 2."""
        return F.interpolate(x, scale_factor=2.0, mode="nearest-exact")


class Resample(nn.Module):
    """Spatial 2x down/upsampling (`resample.1`), with a causal temporal 2x step (`time_conv`) in the 3-D modes."""

    def __init__(self, dim: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode in ("upsample2d", "upsample3d"):
            self.resample = nn.Sequential(NearestUpsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        elif mode in ("downsample2d", "downsample3d"):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        else:
            raise ValueError(f"unknown resample mode {mode!r}")
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))
            self.time_conv.looks_back = True  # its one cached frame is prepended in forward below

    def forward(self, x, step):
        """Resample x [B,C,T,H,W]; the temporal step doubles (up) or halves (down) T after the first pass."""
        if self.mode == "upsample3d" and not step.first:
            x = _interleave_frames(self.time_conv(x, step))
        b, c, t, h, w = x.shape
        frames = self.resample(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        layout = torch.channels_last_3d if frames_layout(frames) == torch.channels_last else torch.contiguous_format
        x = frames.view(b, t, *frames.shape[1:]).permute(0, 2, 1, 3, 4).contiguous(memory_format=layout)
        if self.mode == "downsample3d":
            slot = self.time_conv.cache_slot
            previous = step.read(slot)
            step.write(slot, x[:, :, -1:].clone())
            if not step.first:
                # frames (last, 0, 1), (1, 2, 3), ...: stride 2 over the previous pass's last frame + this pass
                x = self.time_conv(torch.cat([previous, x], dim=2))  # front_pad 0: a plain strided conv
        return x


def _interleave_frames(doubled: torch.Tensor) -> torch.Tensor:
    """[B, 2C, T, H, W] (channel s*C + c holds frame 2t+s) -> [B, C, 2T, H, W], in the input's layout."""
    b, c2, t, h, w = doubled.shape
    c = c2 // 2
    if frames_layout(doubled) == torch.channels_last_3d:
        # one copy in channels-last order: (B, T, H, W, 2, C) -> (B, T, 2, H, W, C)
        cl = doubled.permute(0, 2, 3, 4, 1).view(b, t, h, w, 2, c).permute(0, 1, 4, 2, 3, 5)
        return cl.reshape(b, 2 * t, h, w, c).permute(0, 4, 1, 2, 3)
    return doubled.view(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)


def number_cache_slots(module: nn.Module) -> int:
    """Give every temporal layer under `module` its own cache slot; returns the number of slots."""
    count = 0
    for layer in module.modules():
        if isinstance(layer, CausalConv3d) and layer.looks_back:
            layer.cache_slot = count
            count += 1
    return count
