"""Wan2.1 DiT (optionally with VACE) in the original module tree: `patch_embedding`, `text_embedding`,
`time_embedding`, `time_projection`, `blocks.N`, `head`, `vace_blocks.M`, `vace_patch_embedding`.

Every size is read from the weights (1.3B, 14B, tiny test models). The forward is split into small steps
(embed text / time, patchify, run blocks, head, unpatchify) that the streaming loop (models/wan/stream.py)
and the full-sequence reference forward below share, so both run exactly the same math.
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import attention, check_backend
from .rope import RotaryTable
from .vace import VaceBlock, combine_hints, vace_hints, vace_layer_map
from .blocks import WanBlock, WanHead


@dataclass(frozen=True)
class WanConfig:
    """Sizes of a Wan2.1 DiT; `from_state_dict` reads them from the weights."""

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple = (1, 2, 2)
    text_len: int = 512
    eps: float = 1e-6
    num_vace_blocks: int = 0
    vace_in_dim: int = 96
    head_dim: int = field(init=False)

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not a multiple of num_heads {self.num_heads}")
        object.__setattr__(self, "head_dim", self.dim // self.num_heads)

    @classmethod
    def from_state_dict(cls, sd: dict, head_dim: int = 128) -> "WanConfig":
        """Sizes from a (prefix-free) state dict; heads = dim // head_dim (128 in every Wan2.1 model)."""
        dim = sd["head.modulation"].shape[-1]
        patch = tuple(sd["patch_embedding.weight"].shape[2:])
        return cls(
            dim=dim,
            ffn_dim=sd["blocks.0.ffn.0.weight"].shape[0],
            num_heads=max(1, dim // head_dim),
            num_layers=_count_indexed(sd, "blocks."),
            in_dim=sd["patch_embedding.weight"].shape[1],
            out_dim=sd["head.head.weight"].shape[0] // math.prod(patch),
            text_dim=sd["text_embedding.0.weight"].shape[1],
            freq_dim=sd["time_embedding.0.weight"].shape[1],
            patch_size=patch,
            num_vace_blocks=_count_indexed(sd, "vace_blocks."),
            vace_in_dim=sd["vace_patch_embedding.weight"].shape[1] if "vace_patch_embedding.weight" in sd else 96,
        )


def _count_indexed(sd: dict, prefix: str) -> int:
    indices = {int(k[len(prefix):].split(".", 1)[0]) for k in sd if k.startswith(prefix)}
    return max(indices) + 1 if indices else 0


def sinusoidal_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Wan's timestep embedding: [cos(t*w_j) ..., sin(t*w_j) ...], w_j = 10000^(-j/(dim/2)), in float64."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=timesteps.device) / half)
    angles = timesteps.to(torch.float64)[..., None] * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def _float32_mlp(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        x = F.linear(x, layer.weight.float(), layer.bias.float()) if isinstance(layer, nn.Linear) else layer(x)
    return x


class WanDiT(nn.Module):
    """Wan2.1 text-to-video DiT, with the VACE branch when the config has VACE blocks."""

    def __init__(self, config: WanConfig):
        super().__init__()
        c = self.config = config
        self.patch_embedding = nn.Conv3d(c.in_dim, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(c.text_dim, c.dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(c.dim, c.dim))
        self.time_embedding = nn.Sequential(nn.Linear(c.freq_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 6 * c.dim))
        self.blocks = nn.ModuleList(WanBlock(c.dim, c.ffn_dim, c.num_heads, c.eps) for _ in range(c.num_layers))
        self.head = WanHead(c.dim, c.out_dim * math.prod(c.patch_size), c.eps)
        self.vace_layers = vace_layer_map(c.num_layers, c.num_vace_blocks)
        if c.num_vace_blocks:
            self.vace_patch_embedding = nn.Conv3d(c.vace_in_dim, c.dim, kernel_size=c.patch_size,
                                                  stride=c.patch_size)
            self.vace_blocks = nn.ModuleList(VaceBlock(c.dim, c.ffn_dim, c.num_heads, c.eps, first=(m == 0))
                                             for m in range(c.num_vace_blocks))

    attention_backend = "sdpa"

    def set_attention_backend(self, name: str) -> None:
        """Use this attention kernel in this model (and the streams over it): see models/wan/attention.py."""
        self.attention_backend = check_backend(name)
        for block in list(self.blocks) + list(getattr(self, "vace_blocks", None) or []):
            block.cross_attn.backend = name

    @property
    def has_vace(self) -> bool:
        """True when the model has the VACE branch."""
        return bool(self.config.num_vace_blocks)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the Linear weights."""
        return self.head.head.weight.dtype

    # ---- conditioning -------------------------------------------------------------------------------
    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """umT5 embeddings [B, L, text_dim] -> [B, text_len, dim], zero-padded to text_len like Wan."""
        if text.ndim != 3 or text.shape[-1] != self.config.text_dim:
            raise ValueError(f"text embeddings must be [batch, tokens, {self.config.text_dim}] (umT5-XXL), "
                             f"got {tuple(text.shape)}")
        text = text[:, :self.config.text_len]
        padded = text.new_zeros(text.shape[0], self.config.text_len, text.shape[2])
        padded[:, :text.shape[1]] = text
        return self.text_embedding(padded.to(self.dtype))

    def text_kv(self, text: torch.Tensor) -> tuple:
        """Cross-attention K/V of every base block and VACE block for one prompt (the text cache)."""
        tokens = self.embed_text(text)
        base = [block.cross_attn.text_kv(tokens) for block in self.blocks]
        vace = [block.cross_attn.text_kv(tokens) for block in self.vace_blocks] if self.has_vace else []
        return base, vace

    def embed_time(self, timesteps: torch.Tensor) -> tuple:
        """timesteps [B] or [B, F] -> (e [B, F_e, dim], e0 [B, F_e, 6, dim]) in float32."""
        if timesteps.ndim == 1:
            timesteps = timesteps[:, None]
        # float32 whatever the weights' dtype, as Wan runs it (under fp32 autocast): bf16 here costs ~0.4 % in
        # e0, and a stream computes these once
        e = _float32_mlp(self.time_embedding, sinusoidal_embedding(timesteps, self.config.freq_dim).float())
        e0 = _float32_mlp(self.time_projection, e).unflatten(-1, (6, self.config.dim))
        return e, e0

    # ---- tokens -------------------------------------------------------------------------------------
    def patchify(self, latents: torch.Tensor, embedding: nn.Conv3d = None) -> torch.Tensor:
        """[B, C, F, H, W] -> tokens [B, F*h*w, dim] (float32)."""
        embedding = embedding or self.patch_embedding
        return embedding(latents.to(embedding.weight.dtype)).flatten(2).transpose(1, 2).float()

    def unpatchify(self, tokens: torch.Tensor, grid: tuple) -> torch.Tensor:
        """tokens [B, F*h*w, out*prod(patch)] -> latents [B, out, F*pt, h*ph, w*pw]."""
        frames, height, width = grid
        pt, ph, pw = self.config.patch_size
        x = tokens.reshape(tokens.shape[0], frames, height, width, pt, ph, pw, self.config.out_dim)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(tokens.shape[0], self.config.out_dim, frames * pt, height * ph, width * pw)

    def token_grid(self, latent_shape) -> tuple:
        """(frames, height, width) of the token grid for latents of shape [B, C, F, H, W]."""
        pt, ph, pw = self.config.patch_size
        _, _, f, h, w = latent_shape
        if f % pt or h % ph or w % pw:
            raise ValueError(f"latent size {tuple(latent_shape[2:])} is not a multiple of the patch {self.config.patch_size}")
        return f // pt, h // ph, w // pw

    # ---- the network --------------------------------------------------------------------------------
    def run_blocks(self, x: torch.Tensor, e0: torch.Tensor, text_kvs: list, rope: RotaryTable,
                   attends: list, hints: list = None, need_output: bool = True) -> torch.Tensor:
        """All base blocks on tokens x (float32); the paired blocks add their VACE (hint, scale) (combine_hints).

        need_output=False (a KV-cache pass, `attends` writing the cache): only the K/V count, so the last block
        stops at its cache write and the returned tokens are not the model's.
        """
        hint_at = dict(zip(self.vace_layers, hints)) if hints else {}
        last = len(self.blocks) - 1
        for i, (block, text_kv, attend) in enumerate(zip(self.blocks, text_kvs, attends)):
            x = block(x, e0, text_kv, rope, attend, hint_at.get(i), keys_only=not need_output and i == last)
        return x

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor, *,
                start_frame: int = 0, mask: torch.Tensor = None, vace_context: list = None,
                vace_scales: list = None, vace_mask: torch.Tensor = None) -> torch.Tensor:
        """Full-sequence forward (no KV cache): the reference the streaming path is tested against.

        latents [B, 16, F, H, W]; timesteps [B] or [B, F]; text [B, L, text_dim]; `mask` [L, L] bool
        (True = attend) for the base blocks, `vace_mask` for the VACE blocks; vace_context: list of
        [B, 96, F, H, W] contexts with `vace_scales`. Returns the predicted velocity, like `latents`.
        """
        grid = self.token_grid(latents.shape)
        rope = RotaryTable.for_grid(self.config.head_dim, start_frame, *grid, device=latents.device)
        text_base, text_vace = self.text_kv(text)
        e, e0 = self.embed_time(timesteps)
        x = self.patchify(latents)
        hints = None
        if vace_context:
            attend_vace = [lambda q, k, v: attention(q, k, v, vace_mask)] * len(self.vace_blocks)
            per_context = [vace_hints(self.vace_blocks, self.patchify(ctx, self.vace_patch_embedding), x, e0,
                                      text_vace, rope, attend_vace) for ctx in vace_context]
            hints = combine_hints(per_context, vace_scales or [1.0] * len(vace_context))
        attend = [lambda q, k, v: attention(q, k, v, mask)] * len(self.blocks)
        x = self.run_blocks(x, e0, text_base, rope, attend, hints)
        return self.unpatchify(self.head(x, e), grid).float()
