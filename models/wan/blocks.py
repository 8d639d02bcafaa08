"""The parts of a Wan2.1 DiT block, in the original module tree and key names (`self_attn.q`, `norm3`, `ffn.0`, ...).

A block is 6-way adaLN: (shift, scale, gate) for self-attention and for the feed-forward, from the block's
`modulation` plus the timestep projection; cross-attention to the text has no modulation. As in the
original Wan, norms and modulation run in float32 and the residual stream stays float32; the Linear
layers run in the weights' dtype.
"""

from typing import Callable

import torch
import torch.nn as nn

from .attention import attention
from .rope import RotaryTable

# attend(q, k, v) -> out: full-sequence attention with a mask, or the KV cache's write-then-attend. A KV cache's
# attend also takes need_output=False: write (and record) only, return None (a cache pass's last block).
AttendFn = Callable[..., torch.Tensor]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift, with shift/scale [B, F_e, dim] broadcast over each frame's tokens.

    F_e is 1 (one timestep for the whole input) or the number of latent frames (a timestep per frame).
    """
    frames = shift.shape[1]
    x = x.unflatten(1, (frames, -1))
    return (x * (1 + scale[:, :, None]) + shift[:, :, None]).flatten(1, 2)


def gated(y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """y * gate in float32, gate [B, F_e, dim] broadcast per frame."""
    return (y.float().unflatten(1, (gate.shape[1], -1)) * gate[:, :, None]).flatten(1, 2)


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the dtype of its affine parameters (as in the original Wan)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise x (float32 in, float32 out)."""
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return nn.functional.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)


class _Projections(nn.Module):
    """q, k, v, o Linears and RMSNorms on q and k over the full width (before the head split), as in Wan."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)


class SelfAttention(_Projections):
    """Self-attention with RMS-normalised q/k over the full width and 3-D RoPE."""

    def qkv(self, x: torch.Tensor, rope: RotaryTable) -> tuple:
        """x [B, L, dim] in the weights' dtype -> rotated q, k and v [B, L, heads, head_dim]."""
        q = rope.apply_normed(self.q(x), self.norm_q, self.num_heads)
        k = rope.apply_normed_to_keys(self.k(x), self.norm_k, self.num_heads)
        return q, k, self.v(x).unflatten(-1, (self.num_heads, -1))

    def forward(self, x: torch.Tensor, rope: RotaryTable, attend: AttendFn) -> torch.Tensor:
        """x [B, L, dim] in the weights' dtype -> [B, L, dim]."""
        return self.o(attend(*self.qkv(x, rope)).flatten(-2))


class CrossAttention(_Projections):
    """Attention from the video tokens to the text tokens; the text K/V are computed once per prompt."""

    backend = "sdpa"  # the model's attention kernel (WanDiT.set_attention_backend)

    def text_kv(self, text: torch.Tensor) -> tuple:
        """(k, v) [B, L_text, heads, head_dim] of the embedded text, to cache for a prompt."""
        heads = (self.num_heads, -1)
        return self.norm_k(self.k(text)).unflatten(-1, heads), self.v(text).unflatten(-1, heads)

    def forward(self, x: torch.Tensor, text_kv: tuple) -> torch.Tensor:
        """x [B, L, dim] -> [B, L, dim]."""
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))
        return self.o(attention(q, *text_kv, backend=self.backend).flatten(-2))


class WanBlock(nn.Module):
    """One DiT block: modulated self-attention, cross-attention to the text, modulated feed-forward."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, eps: float):
        super().__init__()
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)
        self.norm1 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, num_heads, eps)
        self.norm3 = FP32LayerNorm(dim, eps=eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(dim, num_heads, eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the Linear layers compute in (the text projections' dtype: they are never quantised)."""
        return self.cross_attn.k.weight.dtype

    regions = None  # (attention_inputs, attention_outputs) compiled for all blocks (models/wan/fast_path.py)

    def forward(self, x: torch.Tensor, e0: torch.Tensor, text_kv: tuple, rope: RotaryTable,
                attend: AttendFn, hint: tuple = None, keys_only: bool = False) -> torch.Tensor:
        """x [B, L, dim] float32, e0 [B, F_e, 6, dim] float32 -> updated x (+ hint * scale for a VACE
        (hint, scale) pair). keys_only: stop after the KV-cache write and return x unchanged (the last block of
        a cache pass, whose output nothing reads: one attention and one block's matmuls less per chunk)."""
        inputs, outputs = self.regions or (type(self).attention_inputs, type(self).attention_outputs)
        q, k, v = inputs(self, x, e0, rope)
        if keys_only:
            attend(q, k, v, need_output=False)
            return x
        return outputs(self, x, attend(q, k, v), e0, text_kv, hint)

    # The block is split at the self-attention so that the parts around it (all the elementwise work:
    # modulation, norms, RoPE, gates, residuals, GELU) compile into fused kernels that every block shares,
    # while the attention itself (a KV-cache write + one attention kernel) stays a plain call.
    def attention_inputs(self, x: torch.Tensor, e0: torch.Tensor, rope: RotaryTable) -> tuple:
        """The self-attention's rotated q, k, v [B, L, heads, head_dim] for tokens x (float32)."""
        shift1, scale1, _, _, _, _ = (self.modulation.float() + e0).unbind(2)
        return self.self_attn.qkv(modulate(self.norm1(x), shift1, scale1).to(self.dtype), rope)

    def attention_outputs(self, x: torch.Tensor, attended: torch.Tensor, e0: torch.Tensor,
                          text_kv: tuple, hint: tuple = None) -> torch.Tensor:
        """The rest of the block after the self-attention kernel: output projection, gate, cross-attention, FFN,
        then the VACE hint (hint, scale) if given, added in the same fused pass."""
        dtype = self.dtype
        _, _, gate1, shift2, scale2, gate2 = (self.modulation.float() + e0).unbind(2)
        x = x + gated(self.self_attn.o(attended.flatten(-2)), gate1)
        x = x + self.cross_attn(self.norm3(x).to(dtype), text_kv).float()
        h = modulate(self.norm2(x), shift2, scale2).to(dtype)
        x = x + gated(self.feed_forward(h), gate2)
        return x if hint is None else x + hint[0].float() * hint[1]

    def feed_forward(self, h: torch.Tensor) -> torch.Tensor:
        """ffn(h); inside compiled regions on CUDA the first Linear's bias and GELU run in its matmul (linear_gelu)."""
        first, gelu, second = self.ffn
        if torch.compiler.is_compiling() and linear_gelu_fits(first, gelu, h):
            return second(linear_gelu(first, h))
        return self.ffn(h)


def linear_gelu_fits(linear: nn.Module, gelu: nn.Module, h: torch.Tensor) -> bool:
    """True when GELU(linear(h)) can run as linear_gelu: a plain biased Linear, tanh GELU, CUDA."""
    return (h.is_cuda and type(linear) is nn.Linear and linear.bias is not None and isinstance(gelu, nn.GELU)
            and gelu.approximate == "tanh")


def linear_gelu(linear: nn.Linear, h: torch.Tensor) -> torch.Tensor:
    """tanh-GELU(linear(h)) with the bias and GELU in the cuBLASLt matmul's epilogue (CUDA): one pass less over
    the 8960-wide hidden rows than a separate GELU kernel."""
    hidden = torch._addmm_activation(linear.bias, h.flatten(0, -2), linear.weight.t(), use_gelu=True)
    return hidden.unflatten(0, h.shape[:-1])


class WanHead(nn.Module):
    """Output head: modulated LayerNorm then a Linear to one patch of latent channels per token."""

    def __init__(self, dim: int, out_channels: int, eps: float):
        super().__init__()
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim ** 0.5)
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_channels)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim] float32, e [B, F_e, dim] float32 (the time embedding) -> [B, L, out]."""
        shift, scale = (self.modulation.float()[:, None] + e[:, :, None]).unbind(2)
        return self.head(modulate(self.norm(x), shift, scale).to(self.head.weight.dtype))
