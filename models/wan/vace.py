"""VACE: the control branch that turns a 96-channel context into hints added to the base blocks.

c = before_proj(vace_patch_embedding(context)) + x;  VACE block M runs a normal Wan block on c and emits
hint_M = after_proj(c);  base block vace_layers[M] adds hint_M * context_scale. The 96 channels are
16 (latent of the inactive region) + 16 (latent of the reactive region) + 64 (mask, 8x8 pixel-unshuffle).

Streaming adaptation: VACE blocks attend within the current chunk only (no KV cache over past chunks);
reference images never enter the denoised latent: their context tokens sit in front of the chunk in the
VACE branch, and their K/V are computed once per stream (see models/wan/stream.py).
"""

from dataclasses import dataclass

import torch
import torch.nn as nn

from .rope import RotaryTable
from .blocks import WanBlock


@dataclass
class VaceInput:
    """One VACE control for a chunk: its 96-channel context [B, 96, F, h, w], a strength, optional references."""

    context: torch.Tensor
    scale: float = 1.0  # a float, or a 0-d tensor on the model's device (the CUDA graphs' static strength)
    reference: object = None  # a models.vace_reference.VaceReference


class VaceBlock(WanBlock):
    """A Wan block on the VACE stream, with after_proj (and before_proj on the first block): (c, hint) out."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, eps: float, first: bool):
        super().__init__(dim, ffn_dim, num_heads, eps)
        if first:
            self.before_proj = nn.Linear(dim, dim)
        self.after_proj = nn.Linear(dim, dim)

    def attention_outputs(self, x: torch.Tensor, attended: torch.Tensor, e0: torch.Tensor, text_kv: tuple,
                          hint=None) -> tuple:
        """The block's output c (float32) and its hint after_proj(c), in the weights' dtype: inside the compiled
        region the cast of c fuses into the kernel that writes it."""
        c = super().attention_outputs(x, attended, e0, text_kv)
        return c, self.after_proj(c.to(self.dtype))


def vace_layer_map(num_layers: int, num_vace_blocks: int) -> list:
    """Base block index of each VACE block: 0, k, 2k, ... with k = num_layers // num_vace_blocks."""
    if num_vace_blocks == 0:
        return []
    step = num_layers // num_vace_blocks
    if step == 0:
        raise ValueError(f"{num_vace_blocks} VACE blocks cannot pair with {num_layers} base blocks")
    return [i * step for i in range(num_vace_blocks)]


def vace_hints(blocks, context_tokens: torch.Tensor, x_tokens: torch.Tensor, e0: torch.Tensor,
               text_kvs: list, rope: RotaryTable, attends: list) -> list:
    """Hints [B, L, dim] (the weights' dtype), one per VACE block, for patch-embedded context tokens [B, L, dim].

    `attends[M]` is VACE block M's attention (chunk-local, or over cached reference K/V + the chunk).
    """
    first = blocks[0]
    dtype = first.before_proj.weight.dtype
    c = first.before_proj(context_tokens.to(dtype)).float() + x_tokens
    hints = []
    for block, text_kv, attend in zip(blocks, text_kvs, attends):
        c, hint = block(c, e0, text_kv, rope, attend)
        hints.append(hint)
    return hints


def combine_hints(per_context: list, scales: list) -> list:
    """(hint, scale) per VACE block, which its base block adds as x + hint * scale (float32) inside its own
    compiled region. One context passes its hints through with its scale as a device scalar (a tensor, so a
    new strength recompiles nothing); several are summed here, sum_j scale_j * hints_j, with scale 1."""
    device = per_context[0][0].device
    if len(per_context) == 1:  # a replayed graph passes its static strength tensor
        scale = scales[0]
        if not torch.is_tensor(scale):
            scale = torch.full((), float(scale), dtype=torch.float32, device=device)
        return [(h, scale) for h in per_context[0]]
    total = [h.float() * scales[0] for h in per_context[0]]
    for hints, scale in zip(per_context[1:], scales[1:]):
        for i, h in enumerate(hints):
            total[i] = total[i] + h.float() * scale
    one = torch.ones((), dtype=torch.float32, device=device)
    return [(t, one) for t in total]
