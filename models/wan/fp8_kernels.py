"""Triton kernels of the FP8 path: row-wise e4m3 quantisation, optionally of GELU(x), in one pass over x.

Imported by models/wan/fp8.py on every machine; Triton itself is imported on first use, so CPU-only installs
(no Triton) take the PyTorch path in fp8.py. The kernel is registered as a torch custom op so that compiled
block regions call it (Inductor keeps it as one kernel) and CUDA graphs capture it.
"""

import functools

import torch

E4M3_MAX = 448.0


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """True when Triton can build kernels for the CUDA device here (Linux CUDA builds of PyTorch ship it)."""
    from torch.utils._triton import has_triton

    return has_triton()


@functools.lru_cache(maxsize=None)
def _op():
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton

    @triton.jit
    def quantize_rows_kernel(x_ptr, values_ptr, scales_ptr, columns, GELU: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offsets = tl.arange(0, BLOCK)
        inside = offsets < columns
        x = tl.load(x_ptr + row * columns + offsets, mask=inside, other=0.0).to(tl.float32)
        if GELU:  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), tanh(u) = 1 - 2 / (exp(2u) + 1)
            inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)
            x = 0.5 * x * (2.0 - 2.0 / (tl.exp(2.0 * inner) + 1.0))
        scale = tl.maximum(tl.max(tl.abs(x), axis=0), 1e-12) / E4M3_MAX
        values = tl.minimum(tl.maximum(x / scale, -E4M3_MAX), E4M3_MAX)
        tl.store(values_ptr + row * columns + offsets, values.to(tl.float8e4nv), mask=inside)
        tl.store(scales_ptr + row, scale)

    @triton_op("streamvace::quantize_rows_e4m3", mutates_args=())
    def quantize_rows_e4m3(x: torch.Tensor, gelu: bool) -> tuple[torch.Tensor, torch.Tensor]:
        rows, columns = x.shape
        values = torch.empty((rows, columns), dtype=torch.float8_e4m3fn, device=x.device)
        scales = torch.empty((rows, 1), dtype=torch.float32, device=x.device)
        block = triton.next_power_of_2(columns)
        wrap_triton(quantize_rows_kernel)[(rows,)](x, values, scales, columns, GELU=gelu, BLOCK=block,
                                                   num_warps=min(16, max(4, block // 1024)))
        return values, scales

    return quantize_rows_e4m3


def quantize_rows_e4m3(x: torch.Tensor, gelu: bool = False) -> tuple:
    """x [M, K] (CUDA) -> (e4m3 values, float32 scales [M, 1]) of x, or of GELU(x) with gelu=True."""
    return _op()(x.contiguous(), gelu)
