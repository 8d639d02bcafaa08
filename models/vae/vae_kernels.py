"""Fused elementwise passes of the Wan VAE's residual blocks, over channels-last activations.

In channels-last memory each pixel's channels are one contiguous row, so RMSNorm (a reduction over the
channels) + SiLU, with the previous conv's bias folded in, is one read and one write per row; the
residual sum takes the last conv's bias with it. On CUDA with Triton these run as Triton kernels (a
bias add, a norm, a SiLU and a residual add were five full passes over the largest tensors of the
decoder); elsewhere, and for layouts the kernels do not take, the same arithmetic runs as PyTorch ops.
"""

import functools

import torch
import torch.nn.functional as F


def rms_normalize(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """x / ||x||_2 * gamma over the channel axis (the norm reduced in float32)."""
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=torch.float32).clamp_min(1e-12)
    return x * norm.reciprocal().to(x.dtype) * gamma.to(x.dtype)


def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(1, -1, *([1] * (like.dim() - 2))).to(like.dtype)


@functools.lru_cache(maxsize=None)
def _triton_available() -> bool:
    from torch.utils._triton import has_triton

    return has_triton()


def _rows(x: torch.Tensor) -> bool:
    """True when x's channels are contiguous rows (channels-last), on a device the kernels run on."""
    order = (0, *range(2, x.dim()), 1)
    return (x.is_cuda and x.dtype in (torch.bfloat16, torch.float16, torch.float32) and x.shape[1] <= 1024
            and x.permute(order).is_contiguous() and _triton_available())


def norm_silu(x: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor = None, out: torch.Tensor = None):
    """SiLU(rms_normalize(x + bias, gamma)) over the channels of x [B, C, ...]; written into `out` when given
    (any view of x's shape, e.g. frames of a larger conv input), else returned as a new tensor."""
    if out is None:
        out = torch.empty_like(x)
    if _rows(x) and _rows(out):
        _kernels().norm_silu_rows(x, gamma.reshape(-1), bias, out, x.shape[1], x.numel() // x.shape[1])
        return out
    if bias is not None:
        x = x + _per_channel(bias, x)
    return out.copy_(F.silu(rms_normalize(x, gamma)))


def add_bias_residual(h: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """h + bias (per channel, or None) + residual, written into h."""
    if bias is None:
        return h.add_(residual)
    if _rows(h) and _rows(residual):
        _kernels().add_rows(h, bias, residual, h.shape[1], h.numel() // h.shape[1])
        return h
    return h.add_(_per_channel(bias, h)).add_(residual)


@functools.lru_cache(maxsize=None)
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def norm_silu_kernel(x_ptr, gamma_ptr, bias_ptr, out_ptr, rows, C: tl.constexpr, HAS_BIAS: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        r = (tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R))[:, None]
        c = tl.arange(0, BLOCK_C)[None, :]
        inside = (r < rows) & (c < C)
        x = tl.load(x_ptr + r * C + c, mask=inside, other=0.0).to(tl.float32)
        if HAS_BIAS:
            x = tl.where(inside, x + tl.load(bias_ptr + c, mask=c < C, other=0.0).to(tl.float32), 0.0)
        inverse_norm = 1.0 / tl.maximum(tl.sqrt(tl.sum(x * x, axis=1)), 1e-12)
        y = x * inverse_norm[:, None] * tl.load(gamma_ptr + c, mask=c < C, other=0.0).to(tl.float32)
        tl.store(out_ptr + r * C + c, (y / (1.0 + tl.exp(-y))).to(out_ptr.dtype.element_ty), mask=inside)

    @triton.jit
    def add_kernel(h_ptr, bias_ptr, residual_ptr, rows, C: tl.constexpr, BLOCK_R: tl.constexpr,
                   BLOCK_C: tl.constexpr):
        r = (tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R))[:, None]
        c = tl.arange(0, BLOCK_C)[None, :]
        inside = (r < rows) & (c < C)
        h = tl.load(h_ptr + r * C + c, mask=inside, other=0.0).to(tl.float32)
        h += tl.load(bias_ptr + c, mask=c < C, other=0.0).to(tl.float32)
        h += tl.load(residual_ptr + r * C + c, mask=inside, other=0.0).to(tl.float32)
        tl.store(h_ptr + r * C + c, h.to(h_ptr.dtype.element_ty), mask=inside)

    def blocks(channels):
        block_c = triton.next_power_of_2(channels)
        return max(1, 4096 // block_c), block_c

    class Kernels:
        @staticmethod
        def norm_silu_rows(x, gamma, bias, out, channels, rows):
            block_r, block_c = blocks(channels)
            norm_silu_kernel[(triton.cdiv(rows, block_r),)](
                x, gamma, bias if bias is not None else gamma, out, rows, C=channels, HAS_BIAS=bias is not None,
                BLOCK_R=block_r, BLOCK_C=block_c, num_warps=8)

        @staticmethod
        def add_rows(h, bias, residual, channels, rows):
            block_r, block_c = blocks(channels)
            add_kernel[(triton.cdiv(rows, block_r),)](h, bias, residual, rows, C=channels, BLOCK_R=block_r,
                                                      BLOCK_C=block_c, num_warps=8)

    return Kernels
