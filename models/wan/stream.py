"""The causal chunk loop: one video stream generated chunk by chunk over a KV cache (Self-Forcing / LongLive).

For each chunk of `chunk_frames` latent frames: start from seeded noise, run the few-step sampler (each
step a DiT forward that attends to the cache's sink + window + the chunk itself), then one forward at
t = 0 on the clean chunk rewrites its K/V slots, and the chunk is committed. Everything a chunk needs is
allocated when the stream is created; the loop only indexes with Python ints (no host syncs).
"""

import functools
from dataclasses import dataclass, field

import torch

from ..memory import state_nbytes
from .attention import attention
from .fast_path import ChunkGraphs
from .kv_cache import CachePolicy, cache_policy
from .long_horizon import build_cache
from .rope import RotaryTable
from .stream_checks import check_config, check_prompt
from .sampler import DEFAULT_SHIFT, DEFAULT_STEPS, chunk_seed, model_timestep, predict_x0, renoise, sigma_schedule
from .vace import VaceInput, combine_hints, vace_hints  # noqa: F401 (VaceInput: part of this API)
from .dit import WanDiT

VAE_SPATIAL = 8


@dataclass(frozen=True)
class StreamConfig:
    """Everything that fixes a stream's shapes; `seed` is only the starting seed (`WanStream.set_seed` changes it
    from the next chunk on, so a node keys its streams on the config without the seed)."""

    height: int = 480
    width: int = 832
    chunk_frames: int = 3
    policy: CachePolicy = field(default_factory=lambda: cache_policy("longlive"))
    steps: tuple = DEFAULT_STEPS
    warp_steps: bool = True
    shift: float = DEFAULT_SHIFT
    seed: int = 0
    batch: int = 1
    max_frames: int = 21  # only for the full-history policy
    vace_in_cache_pass: bool = False  # Scope runs the clean t = 0 pass without VACE hints (a prompt-switch
    # re-cache always runs without them: the controls of past chunks are not kept)
    vace_mask_time: str = "nearest"  # VACE's per-latent-frame mask sample (models/wan/vace_context.py), or "max"
    recache: str = "longlive"  # prompt switch: one bidirectional pass over the cached frames (LongLive), or
    # "chunkwise": chunk by chunk, each causally over its visible past (an earlier StreamVACE variant)


RECACHE_MODES = ("longlive", "chunkwise")


class WanStream:
    """A causal video stream over a Wan DiT: `set_prompt`, then `next_chunk()` again and again."""

    def __init__(self, model: WanDiT, config: StreamConfig, cuda_graphs: bool = None):
        c = self.config = config
        self.model = model
        param = model.head.head.weight
        self.device, self.dtype = param.device, param.dtype
        check_config(c)
        if c.recache not in RECACHE_MODES:
            raise ValueError(f"unknown prompt-switch re-cache {c.recache!r}; choose one of {RECACHE_MODES}")
        self.latent_shape = (c.batch, model.config.in_dim, c.chunk_frames, c.height // VAE_SPATIAL, c.width // VAE_SPATIAL)
        self.grid = model.token_grid(self.latent_shape)
        self.tokens_per_frame = self.grid[1] * self.grid[2]
        self.sigmas = sigma_schedule(c.steps, c.warp_steps, c.shift)
        mc = model.config
        self.cache = build_cache(c.policy, frame_grid=self.grid[1:], chunk_frames=c.chunk_frames,
                                 tokens_per_frame=self.tokens_per_frame, num_layers=mc.num_layers, batch=c.batch,
                                 num_heads=mc.num_heads, head_dim=mc.head_dim, max_frames=c.max_frames,
                                 dtype=self.dtype, device=self.device)
        self.cache.backend = model.attention_backend
        self.generator = torch.Generator(device=self.device)
        self._noise = torch.empty(self.latent_shape, dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            self._time = [model.embed_time(torch.full((c.batch,), model_timestep(s), device=self.device))
                          for s in self.sigmas + [0.0]]
        # clean latents of the frames in the cache, in the cache's frame slots (for re-caching on a prompt switch)
        self.history = torch.zeros(c.batch, model.config.in_dim, self.cache.capacity_frames, *self.latent_shape[3:],
                                   device=self.device)
        self.text_kv = None
        self.seed = c.seed
        self.prompt_version = 0
        # steady-state forwards replayed from CUDA graphs (models/wan/fast_path.py); on by default on CUDA
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device; use cuda_graphs=False on the CPU")
        self._graphs = None
        self._capture_graphs = True  # False: the graphs' static-buffer forwards run eagerly (CPU tests)
        self.chunks_done = 0
        self._recache_pending = False

    @property
    def nbytes(self) -> int:
        """Bytes this stream holds: KV cache, latent history, noise and time embeddings, text K/V (not the model)."""
        return state_nbytes(self)

    @property
    def frames_done(self) -> int:
        """Latent frames generated and committed so far."""
        return self.cache.frames

    def set_prompt(self, text: torch.Tensor, recache: bool = True) -> None:
        """Cache the cross-attention K/V of a prompt ([B or 1, L, 4096] umT5 embeddings) for later chunks.

        Mid-stream, `recache` recomputes the cached frames' K/V from their clean latents under the new prompt
        before the next chunk (config.recache says how; see `_recache_longlive`). A cache that keeps no fixed
        frame set (deep_forcing) does not re-cache: the new prompt acts from the next chunk.
        """
        check_prompt(text, self.model, self.config.batch)  # once per prompt, not per chunk
        with torch.inference_mode():
            base, vace = self.model.text_kv(text.to(self.device).expand(self.config.batch, -1, -1))
        self.text_kv = (base, vace)
        self.prompt_version += 1
        self._recache_pending = recache and self.frames_done > 0 and self.cache.supports_recache

    def set_seed(self, seed: int) -> None:
        """Draw the noise of the next chunks from `seed` (chunk i uses chunk_seed(seed, i)); nothing restarts."""
        self.seed = int(seed)

    def weight_addresses(self) -> tuple:
        """Where the model's weights and buffers sit in memory: CUDA graphs replay reads from these addresses."""
        return tuple(t.data_ptr() for t in (*self.model.parameters(), *self.model.buffers()))

    def state_moved(self) -> None:
        """The stream's tensors moved (models/memory.move_state) or its model's did: captured CUDA graphs read
        the old addresses, so they are captured again at the next steady chunk."""
        if self._graphs is not None:
            self._capture_graphs, self._graphs = self._graphs.capture, None

    def use_model(self, model: WanDiT) -> None:
        """Continue with another copy of the same weights (recaptures the CUDA graphs)."""
        if model is not self.model:
            self.model, self._graphs = model, None
            self.cache.backend = model.attention_backend

    def reset(self) -> None:
        """Start the video over (the prompt, the seed and all buffers are kept)."""
        self.cache.reset()
        self.chunks_done = 0
        self._recache_pending = False

    def _recache(self) -> None:
        if self.config.recache == "longlive":
            self._recache_longlive()
        else:
            self._recache_chunkwise()

    def _recache_longlive(self) -> None:
        """LongLive v1.0's switch (global sink): ONE t = 0 forward over the clean latents of the frames
        `cache.switch_frames` names, bidirectional among them, each also attending to the sink's stored K/V.

        Past the first cache-full (switch at s > sink + ring) those are the ring's frames: the sink keeps
        the old prompt's K/V (LongLive's is_recompute keeps the write out of the sink slots). Up to it they
        are all frames 0..s-1 and the sink slots are rewritten too (LongLive's recompute starts at frame 0).
        Inputs come from the committed latent history, so a failed chunk before it changes nothing.
        """
        frames = self.cache.switch_frames(self.frames_done)
        slots = self.cache.slots(frames.start, len(frames))
        attends = [self.cache.attend_fn(layer, slots) for layer in range(self.model.config.num_layers)]
        latents = torch.cat([self.history[:, :, slot:slot + n] for _, slot, n in self.cache.frame_slot_runs(slots)], 2)
        rope = self.cache.chunk_rope(self.model.config.head_dim, frames.start, (len(frames), *self.grid[1:]),
                                     device=self.device)
        self._forward(latents, len(self.sigmas), attends, rope, (), need_output=False)

    def _recache_chunkwise(self) -> None:
        """Re-cache chunk by chunk, each chunk causally over its visible past (config.recache="chunkwise")."""
        policy, chunk, end = self.config.policy, self.config.chunk_frames, self.frames_done
        first = policy.sink_frames if policy.window_frames is None else max(policy.sink_frames, end - policy.window_frames)
        resident = set(self.cache.resident_frames())
        for start in range(-(-first // chunk) * chunk, end, chunk):  # whole chunks inside the window
            slots = self.cache.slots(start, chunk)
            index = self.cache.recache_index(slots, [f for f in policy.visible_past(start) if f in resident])
            attends = [self.cache.recache_attend_fn(layer, slots, index) for layer in range(self.model.config.num_layers)]
            latents = torch.cat([self.history[:, :, slot:slot + n] for _, slot, n in self.cache.frame_slot_runs(slots)], 2)
            self._forward(latents, len(self.sigmas), attends, self._rope(start), (), need_output=False)

    def clean_latents(self, start: int, end: int):
        """The generated latents of frames [start, end) [B, 16, end-start, h, w], or None if some left the cache."""
        resident = set(self.cache.resident_frames(window_only=False))  # history is written on commit only
        if start >= end or not all(f in resident for f in range(start, end)):
            return None
        return torch.stack([self.history[:, :, self.cache.frame_slot(f)] for f in range(start, end)], dim=2)

    def _commit(self, slots, clean: torch.Tensor) -> None:
        for source, slot, n in self.cache.frame_slot_runs(slots):
            self.history[:, :, slot:slot + n] = clean[:, :, source:source + n]
        self.cache.commit(slots)
        self.chunks_done += 1
        self._recache_pending = False

    @torch.inference_mode()
    def prefill(self, latents: torch.Tensor) -> None:
        """Append a clean chunk [B, 16, F, h, w] (normalised latents of existing video) to the stream's history,
        so generation continues that video."""
        if self.text_kv is None:
            raise RuntimeError("set a prompt (stream.set_prompt) before prefilling")
        if tuple(latents.shape) != self.latent_shape:
            raise ValueError(f"prefill takes one chunk of latents {self.latent_shape}, got {tuple(latents.shape)}")
        if self._recache_pending:
            self._recache()
        slots = self.cache.slots(self.cache.frames, self.config.chunk_frames)
        attends = [self.cache.attend_fn(layer, slots) for layer in range(self.model.config.num_layers)]
        clean = latents.to(self.device, torch.float32)
        self._forward(clean, len(self.sigmas), attends, self._rope(slots.start_frame), (), need_output=False)
        self._commit(slots, clean)

    def _rope(self, start_frame: int) -> RotaryTable:
        return self.cache.chunk_rope(self.model.config.head_dim, start_frame, self.grid, device=self.device)

    def _check_vace(self, vace) -> list:
        if not vace:
            return []
        if not self.model.has_vace:
            raise ValueError("VACE control was given but the model has no VACE blocks: load a VACE checkpoint "
                             "(or add a VACE module file in the loader)")
        expected = (self.config.batch, self.model.config.vace_in_dim, *self.latent_shape[2:])
        for item in vace:
            if tuple(item.context.shape) != expected:  # values are checked where they are built (no GPU sync here)
                raise ValueError(f"VACE context must be {expected} for this stream, got {tuple(item.context.shape)}")
        return vace

    def _hints(self, vace, x_tokens, e0, slots_rope, text_kv):
        per_context = []
        for item in vace:
            tokens = self.model.patchify(item.context.to(self.device), self.model.vace_patch_embedding)
            if item.reference is None:  # chunk-local attention: no cache over past chunks in the VACE branch
                chunk_local = functools.partial(attention, backend=self.model.attention_backend)
                attends, rope = [chunk_local] * len(self.model.vace_blocks), slots_rope
            else:
                attends, rope = item.reference.chunk_attends(self)
            per_context.append(vace_hints(self.model.vace_blocks, tokens, x_tokens, e0, text_kv[1], rope, attends))
        return combine_hints(per_context, [item.scale for item in vace])

    def _forward(self, x, step, attends, rope, vace, need_output=True, time=None, text_kv=None):
        e, e0 = self._time[step] if time is None else time
        text_kv = self.text_kv if text_kv is None else text_kv
        tokens = self.model.patchify(x)
        hints = self._hints(vace, tokens, e0, rope.plain(), text_kv) if vace else None
        out = self.model.run_blocks(tokens, e0, text_kv[0], rope, attends, hints, need_output=need_output)
        # the cache pass only writes K/V: its velocity would be thrown away
        return self.model.unpatchify(self.model.head(out, e), self.grid) if need_output else None

    def _chunk_forward(self, slots, rope, vace):
        """forward(x, step, vace, need_output) for this chunk: replayed from CUDA graphs in the steady state
        (cache full, no reference images), else the eager blocks."""
        if self.cuda_graphs and self.cache.is_steady(slots) and all(item.reference is None for item in vace):
            if self._graphs is not None and self._graphs.weights != self.weight_addresses():
                self.state_moved()  # ComfyUI offloaded the model and loaded it back elsewhere in memory
            if self._graphs is None:
                self._graphs = ChunkGraphs(self, capture=self._capture_graphs)
            self._graphs.prepare_chunk(slots, rope)
            return self._graphs.forward
        attends = [self.cache.attend_fn(layer, slots) for layer in range(self.model.config.num_layers)]
        return lambda x, step, vace, need_output: self._forward(x, step, attends, rope, vace, need_output)

    @torch.inference_mode()
    def next_chunk(self, vace=(), on_step=None) -> torch.Tensor:
        """Generate, cache and commit the next chunk; returns its normalised latents [B, 16, F, h, w] (float32).

        `vace`: VaceInput controls for this chunk. `on_step(i, n)` is called after each of the n forwards
        (for progress, and to raise on user interruption); a chunk that raises is not committed.
        """
        if self.text_kv is None:
            raise RuntimeError("set a prompt (stream.set_prompt) before generating")
        vace = self._check_vace(vace)
        if self._recache_pending:
            self._recache()
        slots = self.cache.slots(self.cache.frames, self.config.chunk_frames)
        rope = self._rope(slots.start_frame)
        forward = self._chunk_forward(slots, rope, vace)
        self.generator.manual_seed(chunk_seed(self.seed, self.chunks_done))
        x = torch.randn(self.latent_shape, generator=self.generator, device=self.device, out=self._noise)
        total = len(self.sigmas) + 1
        for step, sigma in enumerate(self.sigmas):
            x0 = predict_x0(x, forward(x, step, vace, True), sigma)
            if step + 1 < len(self.sigmas):
                noise = torch.randn(self.latent_shape, generator=self.generator, device=self.device, out=self._noise)
                x = renoise(x0, noise, self.sigmas[step + 1])
            if on_step is not None:
                on_step(step, total)
        forward(x0, len(self.sigmas), vace if self.config.vace_in_cache_pass else (), False)
        if on_step is not None:
            on_step(total - 1, total)
        self._commit(slots, x0)
        return x0
