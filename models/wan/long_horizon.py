"""Training-free long-horizon cache policies: LongLive-infinity and Deep Forcing, at constant cost forever.

Both cache keys WITHOUT RoPE and rotate them when they are attended, so a key's temporal position can
change from chunk to chunk. Queries are rotated at positions 0..n-1 of their chunk and every cached key at
its position minus the chunk's first position: attention scores depend only on position differences, so
this is the same attention as the reference's positions, with angles that stay small however long the
stream runs. Spatial (height, width) positions are never changed. Definitions, for a chunk of n latent
frames starting at frame s (positions in latent frames):

``infinity`` (LongLive v1.0 `wan/modules/causal_model_infinity.py`, `configs/longlive_inference_infinity.yaml`:
sink 3, local_attn_size 12, after Infinity-RoPE, arXiv 2511.20649). The chunk sees the same frames as
``longlive``: the sink frames, the window frames before it and itself, listed in that order,
V = sink + window + chunk. Every key sits at its index in V and the queries at the chunk's indices
(|V| - n .. |V| - 1): "block-relativistic" RoPE, so positions never exceed the window (0..11 at the
defaults) however far the stream has run. Before the window fills, indices equal absolute positions.

``deep_forcing`` (Deep Forcing, arXiv 2512.05081: Deep Sink + Participative Compression on Self-Forcing
weights; the paper's settings S = 10 sink frames, budget N = 16, recent R = 4, cache M = 21 frames). The
only public code we found is the adaptation in zengqunzhao/Relax-Forcing (`wan/modules/deep_forcing_model.py`,
"adapted from Deep-Forcing"); its choices are followed here:
- The cache holds the sink (first S frames), the top-C tokens (C = (N - S - R) frames' worth, chosen per
  layer and batch element) and the history frames since the last compression, then the chunk.
- Compression runs on the first forward of a chunk (the noisiest step) when sink + top-C + history + chunk
  would exceed M frames. Recent = the last R frames of [history | chunk]; candidates = the previous top-C
  tokens + the history frames before the recent ones. Each candidate key k_j (rotated at its position)
  scores phi_j = sum over heads of (sum_r q_r) . k_j, where q_r are the last R frames of queries this layer
  has seen (rotated at their positions): the last R - n frames of the previous forward (the clean cache pass
  of the previous chunk) and the n frames of this forward. The C highest-scoring tokens are kept
  (torch.topk), the others are evicted, and the new recent frames become the history.
- Temporal positions: history, chunk and top-C tokens keep their absolute frame positions (top-C tokens
  keep the position of the frame they came from; the reference's top-C re-alignment never triggers with
  its window of M frames). The sink is re-aligned at each compression to start at s_c - N (s_c: the first
  frame of the compressing chunk; the reference writes this as current_start - tail frames - sink frames)
  and stays there until the next compression; before the first compression it sits at 0..S-1. (At its
  first compression the reference shifts the sink by a hard-coded M - N, which equals s_c - N only when
  the first compression starts at frame M, i.e. when M is a multiple of the chunk size, as at 21 / 3.)
- Differences from that code, none of which changes the definition: keys are stored raw and rotated at
  attention time instead of being rotated in place in bf16 at every compression (which accumulates
  rounding over a long stream); the reference's per-token `topc_max_reuse` cap (not in the paper, default
  7 there) is not implemented, so a top-C token may stay as long as it keeps winning.

Buffers are allocated once; a chunk only writes slots outside the committed state (ring slots of dead
frames and the scratch halves of double buffers), and `commit` flips Python ints, so an interrupted chunk
leaves the stream exactly as it was. No host syncs: positions, masks and top-C come from device ops.
"""

from dataclasses import dataclass

import torch

from .attention import attention
from .kv_cache import CachePolicy, ChunkSlots, DeepForcingPolicy, InfinityPolicy, KVCache
from .rope import RotaryTable, _axis_frequencies, axis_channels, rope_angles


def token_angles(head_dim: int, t: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Rotation angles [..., head_dim/2] (float64) of tokens at temporal / row / column positions t, h, w."""
    parts = []
    for pos, channels in zip((t, h, w), axis_channels(head_dim)):
        parts.append(pos.to(torch.float64)[..., None] * _axis_frequencies(channels, pos.device))
    return torch.cat(parts, dim=-1)


def _per_token(tokens_per_frame: int, per_frame: torch.Tensor) -> torch.Tensor:
    return per_frame.repeat_interleave(tokens_per_frame)


class TokenRotary(RotaryTable):
    """A rotation per token from angles [L, d/2] or [B, L, d/2] (RotaryTable is one grid shared by the batch)."""

    def __init__(self, angles: torch.Tensor):
        self.cos = angles.cos().float()[..., None, :]
        self.sin = angles.sin().float()[..., None, :]


class QueryRotary(RotaryTable):
    """The chunk's rotation for queries only: the cache stores keys raw and rotates them when it attends."""

    def apply_to_keys(self, x: torch.Tensor) -> torch.Tensor:
        """Keys stay raw."""
        return x

    def plain(self) -> RotaryTable:
        """The same rotation for queries and keys (VACE blocks attend within the chunk, without the cache)."""
        table = RotaryTable.__new__(RotaryTable)
        table.cos, table.sin = self.cos, self.sin
        return table


def build_cache(policy: CachePolicy, *, frame_grid: tuple, **kwargs) -> KVCache:
    """The cache class that implements `policy` (frame_grid: latent tokens per frame as (rows, columns))."""
    if isinstance(policy, InfinityPolicy):
        return InfinityCache(policy, frame_grid=frame_grid, **kwargs)
    if isinstance(policy, DeepForcingPolicy):
        return DeepForcingCache(policy, frame_grid=frame_grid, **kwargs)
    return KVCache(policy, **kwargs)


class InfinityCache(KVCache):
    """KVCache layout ([sink | ring]) with raw keys, rotated at attention time by their index in the window."""

    def __init__(self, policy: InfinityPolicy, *, frame_grid: tuple, head_dim: int, **kwargs):
        super().__init__(policy, head_dim=head_dim, **kwargs)
        self.head_dim, self.frame_grid = head_dim, tuple(frame_grid)
        self._memo = (None, None)

    def chunk_rope(self, head_dim, start_frame, grid, device=None) -> RotaryTable:
        """Queries at 0..n-1 whatever the chunk's place in the stream; keys are rotated by the cache."""
        return QueryRotary.for_grid(head_dim, 0, *grid, device=device)

    def _key_rotary(self, slots: ChunkSlots) -> TokenRotary:
        if self._memo[0] is not slots:  # once per chunk, shared by the layers
            sink, ring, start = self.policy.sink_frames, self.ring_frames, slots.start_frame
            end = start + slots.num_frames
            slot = torch.arange(slots.attend_tokens // self.tokens_per_frame, device=self.keys.device)
            # V = the filled sink slots, then the ring's frames in temporal order (the newest written to each
            # ring slot); places count from the chunk's first frame, so a ring frame f sits at f - start
            # and a sink frame i at i minus the chunk's index in V
            ring_filled = min(ring, max(0, end - sink))
            first = start if start < sink else sink + start - (end - ring_filled)
            ring_frame = end - 1 - (end - 1 - slot) % ring
            place = torch.where(slot < sink, slot - first, ring_frame - start)
            self._memo = (slots, TokenRotary(rope_angles(self.head_dim, place, *self.frame_grid)))
        return self._memo[1]

    def is_steady(self, slots: ChunkSlots) -> bool:
        """Never replayed from CUDA graphs yet: the key rotation changes every chunk (eager or compiled blocks)."""
        return False

    def attend_fn(self, layer: int, slots: ChunkSlots):
        """Write the chunk's raw k/v, attend over the filled prefix with keys rotated by their place in V."""
        keys, values = self.keys[layer], self.values[layer]
        rotary = self._key_rotary(slots)

        def attend(q, k, v):
            self._write(layer, slots, k, v)
            n = slots.attend_tokens
            return attention(q, rotary.apply(keys[:, :n]), values[:, :n], backend=self.backend)

        return attend

    def recache_attend_fn(self, layer: int, slots: ChunkSlots, index: torch.Tensor):
        """Attend to the frames in `index` (in temporal order, the chunk last), each at its place in that list."""
        keys, values = self.keys[layer], self.values[layer]
        frames = index.numel() // self.tokens_per_frame
        places = torch.arange(frames, device=keys.device) - (frames - slots.num_frames)
        rotary = TokenRotary(rope_angles(self.head_dim, places, *self.frame_grid))

        def attend(q, k, v):
            self._write(layer, slots, k, v)
            return attention(q, rotary.apply(keys[:, index]), values[:, index], backend=self.backend)

        return attend


@dataclass(frozen=True)
class _Plan:
    """What one chunk of a Deep Forcing stream does (Python decisions + device tensors shared by the layers)."""

    slots: ChunkSlots
    compress: bool
    history_start: int  # first history frame once this chunk is committed
    top_buffer: int  # which half of the top-C double buffer the chunk attends to
    main_rotary: TokenRotary  # raw [sink | ring] keys -> keys at their positions relative to the chunk
    mask: torch.Tensor  # [1, 1, 1, sink + ring + top tokens]: True = attend
    candidates: torch.Tensor  # [top + sink + ring tokens]: True = may be kept by the compression
    main_frame: torch.Tensor  # [sink + ring tokens]: absolute frame held by each slot
    main_token: torch.Tensor  # [sink + ring tokens]: spatial index of each slot within its frame
    tail_shift: TokenRotary  # moves the previous chunk's query tail from its positions to this chunk's


class DeepForcingCache(KVCache):
    """Deep Forcing's cache: [sink | ring of history + chunk] raw K/V plus double-buffered top-C tokens."""

    supports_recache = False  # Deep Forcing has no prompt-switch re-cache; a new prompt acts from the next chunk

    def __init__(self, policy: DeepForcingPolicy, *, frame_grid: tuple, chunk_frames: int, tokens_per_frame: int,
                 num_layers: int, batch: int, num_heads: int, head_dim: int, dtype=torch.bfloat16, device=None,
                 max_frames: int = None):
        # the ring (window = max_frames - sink, + one chunk of scratch) holds every history frame until the
        # compression that evicts it, and the chunk never writes over a committed frame
        super().__init__(policy, chunk_frames=chunk_frames, tokens_per_frame=tokens_per_frame, num_layers=num_layers,
                         batch=batch, num_heads=num_heads, head_dim=head_dim, dtype=dtype, device=device)
        if not chunk_frames <= policy.recent_frames <= 2 * chunk_frames:
            raise ValueError(f"deep_forcing needs chunk_frames <= recent_frames <= 2 * chunk_frames, got recent "
                             f"{policy.recent_frames} with chunks of {chunk_frames}")
        self.head_dim, self.frame_grid, self.chunk_frames = head_dim, tuple(frame_grid), chunk_frames
        self.top_tokens = policy.top_frames * tokens_per_frame
        top = (num_layers, 2, batch, self.top_tokens)
        self.top_keys = torch.zeros(*top, num_heads, head_dim, dtype=dtype, device=device)
        self.top_values = torch.zeros(*top, num_heads, head_dim, dtype=dtype, device=device)
        self.top_frame = torch.zeros(top, dtype=torch.long, device=device)
        self.top_token = torch.zeros(top, dtype=torch.long, device=device)
        # sum of the rotated queries of the last recent - chunk frames of the latest forward, per layer
        self.query_tail = torch.zeros(num_layers, 2, batch, num_heads, head_dim, dtype=torch.float32, device=device)
        self._plan = None
        self.reset()

    @property
    def nbytes(self) -> int:
        """Bytes held by all K/V buffers (main, top-C double buffer) and the query tails."""
        return super().nbytes + self.top_keys.nbytes + self.top_values.nbytes + self.query_tail.nbytes

    def chunk_rope(self, head_dim, start_frame, grid, device=None) -> RotaryTable:
        """Queries at 0..n-1; keys are rotated by the cache relative to the chunk's first frame."""
        return QueryRotary.for_grid(head_dim, 0, *grid, device=device)

    def is_steady(self, slots: ChunkSlots) -> bool:
        """Never replayed from CUDA graphs yet: compression and positions change per chunk (eager or compiled)."""
        return False

    def plan(self, slots: ChunkSlots) -> _Plan:
        """The chunk's compression decision, positions and masks (built once per chunk)."""
        if self._plan is not None and self._plan.slots is slots:
            return self._plan
        p, n, tpf = self.policy, slots.num_frames, self.tokens_per_frame
        start, sink, ring = slots.start_frame, p.sink_frames, self.ring_frames
        compressed = self.compressed_at is not None
        held = sink + (p.top_frames if compressed else 0) + (start - self.history_start) + n
        compress = held > p.max_frames
        history_start = start + n - p.recent_frames if compress else self.history_start
        sink_start = (start if compress else self.compressed_at) - p.budget_frames if compress or compressed else 0
        device = self.keys.device
        last = start + n - 1
        slot = torch.arange(ring, device=device)
        ring_frame = last - (last - sink - slot) % ring  # the newest frame written to each ring slot
        sink_slot = torch.arange(sink, device=device)
        frame = torch.cat([sink_slot, ring_frame])
        place = torch.cat([sink_start + sink_slot, ring_frame]) - start
        valid = torch.cat([sink_slot <= last, ring_frame >= history_start])
        old_history = (ring_frame >= self.history_start) & (ring_frame < start + n - p.recent_frames)
        candidate = torch.cat([torch.full((sink,), False, device=device), old_history])
        top_valid = torch.full((self.top_tokens,), compress or compressed, device=device)
        zero = torch.zeros(1, dtype=torch.long, device=device)
        self._plan = _Plan(
            slots=slots, compress=compress, history_start=history_start,
            top_buffer=1 - self.top_active if compress else self.top_active,
            main_rotary=TokenRotary(rope_angles(self.head_dim, place, *self.frame_grid)),
            mask=torch.cat([_per_token(tpf, valid), top_valid])[None, None, None],
            candidates=torch.cat([torch.full((self.top_tokens,), compressed, device=device), _per_token(tpf, candidate)]),
            main_frame=_per_token(tpf, frame), main_token=torch.arange(tpf, device=device).repeat(sink + ring),
            tail_shift=TokenRotary(token_angles(self.head_dim, zero - n, zero, zero)))
        return self._plan

    def _top_rotary(self, layer: int, buffer: int, start: int) -> TokenRotary:
        width = self.frame_grid[1]
        token = self.top_token[layer, buffer]
        return TokenRotary(token_angles(self.head_dim, self.top_frame[layer, buffer] - start, token // width,
                                        token % width))

    def _compress(self, layer: int, plan: _Plan, q: torch.Tensor, main_keys: torch.Tensor) -> None:
        start, old = plan.slots.start_frame, self.top_active
        tail = plan.tail_shift.apply(self.query_tail[layer, self.tail_active][:, None])[:, 0]
        votes = q.float().sum(1) + tail  # [B, heads, head_dim]: the recent queries, summed (phi is linear in q)
        top_keys = self._top_rotary(layer, old, start).apply(self.top_keys[layer, old])
        keys = torch.cat([top_keys.float(), main_keys.float()], dim=1)
        scores = torch.einsum("bhd,blhd->bl", votes, keys).masked_fill(~plan.candidates, float("-inf"))
        chosen = scores.topk(self.top_tokens, dim=1).indices  # [B, C], on the device
        heads = chosen[..., None, None].expand(-1, -1, *self.keys.shape[-2:])
        new = 1 - old
        for buffer, main in ((self.top_keys, self.keys), (self.top_values, self.values)):
            buffer[layer, new] = torch.cat([buffer[layer, old], main[layer]], dim=1).gather(1, heads)
        batch = chosen.shape[0]
        for buffer, main in ((self.top_frame, plan.main_frame), (self.top_token, plan.main_token)):
            buffer[layer, new] = torch.cat([buffer[layer, old], main.expand(batch, -1)], dim=1).gather(1, chosen)

    def attend_fn(self, layer: int, slots: ChunkSlots):
        """Write the chunk's raw k/v; on the chunk's first forward compress if due; attend over sink + top-C +
        history + chunk, each key at its position relative to the chunk."""
        plan = self.plan(slots)
        tail_frames = self.policy.recent_frames - slots.num_frames
        first = [True]

        def attend(q, k, v):
            self._write(layer, slots, k, v)
            main_keys = plan.main_rotary.apply(self.keys[layer])
            if plan.compress and first[0]:
                self._compress(layer, plan, q, main_keys)
            first[0] = False
            tail_tokens = tail_frames * self.tokens_per_frame
            self.query_tail[layer, 1 - self.tail_active] = q[:, q.shape[1] - tail_tokens:].float().sum(1)
            buffer = plan.top_buffer
            top_keys = self._top_rotary(layer, buffer, slots.start_frame).apply(self.top_keys[layer, buffer])
            keys = torch.cat([main_keys, top_keys], dim=1)
            values = torch.cat([self.values[layer], self.top_values[layer, buffer]], dim=1)
            return attention(q, keys, values, plan.mask, backend=self.backend)

        return attend

    def recache_attend_fn(self, layer: int, slots: ChunkSlots, index: torch.Tensor):
        """Deep Forcing keeps no fixed frame set to re-cache (supports_recache is False)."""
        raise NotImplementedError("deep_forcing does not re-cache on a prompt switch")

    def commit(self, slots: ChunkSlots) -> None:
        """Make a written chunk part of the history; a compressing chunk makes its top-C tokens the committed ones."""
        plan = self.plan(slots)
        super().commit(slots)
        if plan.compress:
            self.top_active = 1 - self.top_active
            self.compressed_at = slots.start_frame
        self.history_start = plan.history_start
        self.tail_active = 1 - self.tail_active

    def reset(self) -> None:
        """Forget the history (the buffers stay allocated)."""
        super().reset()
        self.top_active = self.tail_active = 0
        self.compressed_at = None
        self.history_start = self.policy.sink_frames
        self._plan = None
