"""FP8 (e4m3) Linear layers for the DiT blocks: opt-in speed for a small, measured loss of precision.

Weights are quantised once per output row (scale = row amax / 448); activations per token at run time,
inside the compiled block regions, so the scaling fuses into the kernels that produce them. The product
runs on the FP8 tensor cores (`torch._scaled_mm` with row-wise scales, Hopper and Ada); elsewhere the same
quantised numbers are multiplied in float32, so CPU tests check the arithmetic the GPU runs.
Text-side projections (cross-attention k/v, run once per prompt) and the embeddings/head keep their dtype.
The FFN's GELU moves into its second FP8Linear, so that on CUDA one Triton kernel reads each row of the first
matmul's output once and writes it as GELU'd e4m3 values with their scale (the compiler's own fusion of GELU,
row amax and cast reads the 8960-wide rows twice and costs 4x the memory time).
"""

import torch
import torch.nn as nn

from . import triton_kernels

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
# the per-token projections of a block: self-attention q/k/v/o, cross-attention q/o, the FFN
BLOCK_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.o",
                 "ffn.0", "ffn.2")


def quantize_rows(x: torch.Tensor, gelu: bool = False) -> tuple:
    """x [M, K] -> (e4m3 values [M, K], float32 scales [M, 1]) with x ~= values * scales; gelu=True quantises
    GELU(x) (tanh approximation) instead, in one pass over x on CUDA."""
    if x.is_cuda and x.dtype == torch.bfloat16 and triton_kernels.available():
        return triton_kernels.quantize_rows_e4m3(x, gelu)
    if gelu:
        x = nn.functional.gelu(x, approximate="tanh")
    scale = x.detach().abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


def fp8_matmul_supported(device: torch.device) -> bool:
    """True where torch._scaled_mm runs e4m3 with row-wise scales (CUDA compute capability >= 8.9)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


class FP8Linear(nn.Module):
    """A Linear whose weight is stored in e4m3 with one scale per output row."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight, scale = quantize_rows(linear.weight.data)
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out]: the layout _scaled_mm takes
        self.register_buffer("bias", None if linear.bias is None else linear.bias.data.clone())
        self.out_dtype = linear.weight.dtype
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.gelu_input = False  # True: the layer takes GELU(x) (quantize_blocks_fp8 moves the FFN's GELU here)
        # row-wise scaled FP8 products need bf16 output and dimensions that are multiples of 16
        self.fast = (fp8_matmul_supported(weight.device) and self.out_dtype == torch.bfloat16
                     and self.in_features % 16 == 0 and self.out_features % 16 == 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out] in the original weight's dtype."""
        rows = x.reshape(-1, self.in_features)
        values, scale = quantize_rows(rows, gelu=self.gelu_input)
        if self.fast:
            out = torch._scaled_mm(values, self.weight.t(), scale_a=scale, scale_b=self.weight_scale,
                                   bias=self.bias, out_dtype=self.out_dtype)
        else:
            out = (values.float() * scale) @ (self.weight.float() * self.weight_scale.t()).t()
            out = (out if self.bias is None else out + self.bias.float()).to(self.out_dtype)
        return out.reshape(*x.shape[:-1], self.out_features)


def quantize_blocks_fp8(model) -> int:
    """Replace the per-token Linear layers of every base and VACE block by FP8Linear; returns how many."""
    count = 0
    for block in list(model.blocks) + list(getattr(model, "vace_blocks", None) or []):
        for path in BLOCK_LINEARS:
            parent_path, name = path.rsplit(".", 1)
            parent = block.get_submodule(parent_path)
            layer = getattr(parent, name) if not name.isdigit() else parent[int(name)]
            if isinstance(layer, nn.Linear):
                if name.isdigit():
                    parent[int(name)] = FP8Linear(layer)
                else:
                    setattr(parent, name, FP8Linear(layer))
                count += 1
        if isinstance(block.ffn[1], nn.GELU) and block.ffn[1].approximate == "tanh":
            block.ffn[1], block.ffn[2].gelu_input = nn.Identity(), True
    model.fp8 = True
    return count
