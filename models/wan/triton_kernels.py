"""Triton kernels of the DiT's fast path, each one pass over its input where the compiler's fusion takes more:

- row-wise e4m3 quantisation, optionally of GELU(x) (the FP8 path, models/wan/fp8.py);
- RMSNorm over the full width + 3-D RoPE of the self-attention's q and k (models/wan/rope.py), which Inductor
  fuses into one kernel that runs at a third of the memory speed (the reduction, then the pair interleave).

Imported on every machine; Triton itself is imported on first use, so CPU-only installs (no Triton) take the
PyTorch paths. The kernels are registered as torch custom ops so that compiled block regions call them
(Inductor keeps each as one kernel) and CUDA graphs capture them.
"""

import functools

import torch



@torch.compiler.assume_constant_result  # asked inside compiled regions: Dynamo may not trace has_triton
def available() -> bool:
    """True when Triton can build kernels for the CUDA device here (Linux CUDA builds of PyTorch ship it)."""
    return _has_triton()


@functools.lru_cache(maxsize=None)
def _has_triton() -> bool:
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
        scale = tl.maximum(tl.max(tl.abs(x), axis=0), 1e-12) / 448.0  # fp8.E4M3_MAX (kernels read no globals)
        values = tl.minimum(tl.maximum(x / scale, -448.0), 448.0)
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


@functools.lru_cache(maxsize=None)
def _norm_rope_op():
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton

    @triton.jit
    def norm_rope_kernel(x_ptr, weight_ptr, cos_ptr, sin_ptr, out_ptr, eps, width: tl.constexpr,
                         PAIRS: tl.constexpr, BLOCK_HEADS: tl.constexpr):
        token = tl.program_id(0).to(tl.int64)
        offsets = tl.arange(0, BLOCK_HEADS * 2 * PAIRS)  # the row read and written contiguously
        inside = offsets < width
        x = tl.load(x_ptr + token * width + offsets, mask=inside, other=0.0).to(tl.float32)
        inverse_rms = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / width + eps)
        x = x * inverse_rms * tl.load(weight_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        real, imag = tl.split(tl.reshape(x, (BLOCK_HEADS, PAIRS, 2)))  # interleaved pairs, as Wan's rope_apply
        pair = tl.arange(0, PAIRS)[None, :]
        cos = tl.load(cos_ptr + token * PAIRS + pair)
        sin = tl.load(sin_ptr + token * PAIRS + pair)
        rotated = tl.reshape(tl.join(real * cos - imag * sin, real * sin + imag * cos), (BLOCK_HEADS * 2 * PAIRS,))
        tl.store(out_ptr + token * width + offsets, rotated.to(out_ptr.dtype.element_ty), mask=inside)

    @triton_op("streamvace::rms_norm_rope", mutates_args=())
    def rms_norm_rope(x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor,
                      heads: int) -> torch.Tensor:
        batch, tokens, width = x.shape
        out = torch.empty((batch, tokens, heads, width // heads), dtype=x.dtype, device=x.device)
        pairs = width // heads // 2
        wrap_triton(norm_rope_kernel)[(batch * tokens,)](x, weight, cos, sin, out, eps, width=width, PAIRS=pairs,
                                                         BLOCK_HEADS=triton.next_power_of_2(heads), num_warps=4)
        return out

    return rms_norm_rope


def norm_rope_fits(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int) -> bool:
    """True when rms_norm_rope can take x [B, L, width] with tables cos, sin [1, L, 1, head_dim / 2] (CUDA, Triton)."""
    width = x.shape[-1]
    pairs = width // heads // 2
    return (x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and x.dim() == 3 and width % (2 * heads) == 0
            and pairs & (pairs - 1) == 0 and all(tuple(t.shape) == (1, x.shape[1], 1, pairs) and t.is_contiguous()
                                                 and t.dtype == torch.float32 for t in (cos, sin)) and available())


def register_ops() -> None:
    """Build and register both ops (once). Traced code must only call the registered torch.ops: Dynamo cannot
    trace Triton's own set-up (it would break the graph there), so compiled code reaches this through
    _ops_registered, which Dynamo runs as plain Python."""
    _op()
    _norm_rope_op()


@torch.compiler.assume_constant_result  # run as plain Python, also when traced: any first call may be compiled
def _ops_registered() -> bool:
    register_ops()
    return True


def rms_norm_rope(x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor,
                  heads: int) -> torch.Tensor:
    """RMSNorm(x) * weight over the full width, split into heads and rotated by (cos, sin): [B, L, width] ->
    [B, L, heads, width / heads], computed in float32 and rounded once (CUDA; see norm_rope_fits)."""
    _ops_registered()
    if x.shape[0] != 1:
        cos, sin = cos.expand(x.shape[0], *cos.shape[1:]), sin.expand(x.shape[0], *sin.shape[1:])
    return torch.ops.streamvace.rms_norm_rope(x.contiguous(), weight.contiguous(), eps, cos.contiguous(),
                                              sin.contiguous(), heads)


def quantize_rows_e4m3(x: torch.Tensor, gelu: bool = False) -> tuple:
    """x [M, K] (CUDA) -> (e4m3 values, float32 scales [M, 1]) of x, or of GELU(x) with gelu=True."""
    _ops_registered()
    return torch.ops.streamvace.quantize_rows_e4m3(x.contiguous(), gelu)
