"""Reference images for VACE in a stream: their K/V in every VACE block, computed once per prompt."""

import torch

from .kv_cache import CachePolicy, KVCache
from .rope import RotaryTable
from .vace import vace_hints


class VaceReference:
    """Reference images in the VACE branch: their K/V in every VACE block, computed once per prompt.

    References sit in front of the chunk on the VACE branch's own time axis (frames 0..n-1, the chunk at
    n..n+F-1, as in batch VACE), never in the denoised latent, so chunk size and the main cache stay fixed.
    Their tokens are run once at t = 0 with the clean reference latent as x (like the clean cache pass).
    """

    def __init__(self, stream, reference_latents: torch.Tensor):
        model = stream.model
        if not model.has_vace:
            raise ValueError("reference images need a VACE model")
        b, ch, n, h, w = reference_latents.shape
        if (b, ch, h, w) != (stream.config.batch, model.config.in_dim, *stream.latent_shape[3:]) or n < 1:
            raise ValueError(f"reference latents must be [{stream.config.batch}, {model.config.in_dim}, n, "
                             f"{stream.latent_shape[3]}, {stream.latent_shape[4]}], got {tuple(reference_latents.shape)}")
        self.latents = reference_latents.to(stream.device, torch.float32)
        self.num_frames = n
        mc = model.config
        self.cache = KVCache(CachePolicy(n, 0), chunk_frames=stream.config.chunk_frames,
                             tokens_per_frame=stream.tokens_per_frame, num_layers=mc.num_vace_blocks,
                             batch=stream.config.batch, num_heads=mc.num_heads, head_dim=mc.head_dim,
                             dtype=stream.dtype, device=stream.device)
        self.cache.backend = model.attention_backend
        self._slots = self.cache.slots(n, stream.config.chunk_frames)
        self._rope = RotaryTable.for_grid(mc.head_dim, n, *stream.grid, device=stream.device)
        self._prompt_version = None

    @torch.inference_mode()
    def _encode(self, stream) -> None:
        model = stream.model
        context = torch.cat([self.latents, torch.zeros_like(self.latents),
                             self.latents.new_zeros(self.latents.shape[0], model.config.vace_in_dim - 2 * self.latents.shape[1],
                                                    *self.latents.shape[2:])], dim=1)
        self.cache.reset()
        slots = self.cache.slots(0, self.num_frames)
        rope = RotaryTable.for_grid(model.config.head_dim, 0, self.num_frames, *stream.grid[1:], device=stream.device)
        attends = [self.cache.attend_fn(m, slots) for m in range(model.config.num_vace_blocks)]
        _, e0 = stream._time[-1]
        vace_hints(model.vace_blocks, model.patchify(context, model.vace_patch_embedding), model.patchify(self.latents),
                   e0, stream.text_kv[1], rope, attends)
        self.cache.commit(slots)
        self._prompt_version = stream.prompt_version

    def chunk_attends(self, stream) -> tuple:
        """Per-VACE-block attention over [references | chunk], and the chunk's RoPE on the VACE time axis."""
        if self._prompt_version != stream.prompt_version:
            self._encode(stream)
        return [self.cache.attend_fn(m, self._slots) for m in range(stream.model.config.num_vace_blocks)], self._rope
