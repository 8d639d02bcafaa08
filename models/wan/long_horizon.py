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
frames and scratch copies of the top-C tokens and query tails), and `commit` copies the scratch into the
committed buffers on the device, so an interrupted chunk leaves the stream exactly as it was. No host
syncs: positions, kept slots and top-C come from device ops (torch.topk into preallocated buffers); per-chunk
tensors depend only on positions relative to the chunk, so they are built once per layout (a few, cycled
in the steady state). Steady chunks replay from CUDA graphs (models/wan/fast_path.py): their forwards read
static buffers refilled per chunk by device copies (the key rotation of the ring phase, Deep Forcing's
kept slots and positions, the chunk's first frame), and Deep Forcing's compressing first forward is a graph
variant of its own.
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


def device_ints(values, device) -> torch.Tensor:
    """A long tensor of Python ints written on the device by fill kernels: no host-to-device copy (which
    synchronises from pageable memory) and nothing a CUDA graph capture would refuse."""
    out = torch.zeros(len(values), dtype=torch.long, device=device)
    for i, value in enumerate(values):
        if value:
            out.narrow(0, i, 1).fill_(value)  # fill_(Scalar): the value travels as a kernel argument
    return out


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
        self._rotaries = {}  # key places -> TokenRotary: one per ring phase in the steady state, built once
        self._replay_rotary = None  # static cos/sin that replayed forwards read (see prepare_replay)

    def chunk_rope(self, head_dim, start_frame, grid, device=None) -> RotaryTable:
        """Queries at 0..n-1 whatever the chunk's place in the stream; keys are rotated by the cache."""
        return QueryRotary.for_grid(head_dim, 0, *grid, device=device)

    def key_places(self, slots: ChunkSlots) -> tuple:
        """Temporal place of each attended slot (frames) relative to the chunk's first frame (Python ints).

        V = the filled sink slots, then the ring's frames in temporal order (the newest written to each ring
        slot); places count from the chunk's first frame, so a ring frame f sits at f - start and a sink
        frame i at i minus the chunk's index in V. In the steady state they depend on the ring phase only.
        """
        sink, ring, start = self.policy.sink_frames, self.ring_frames, slots.start_frame
        end = start + slots.num_frames
        ring_filled = min(ring, max(0, end - sink))
        first = start if start < sink else sink + start - (end - ring_filled)
        return tuple(slot - first if slot < sink else end - 1 - (end - 1 - slot) % ring - start
                     for slot in range(slots.attend_tokens // self.tokens_per_frame))

    def _key_rotary(self, slots: ChunkSlots) -> TokenRotary:
        places = self.key_places(slots)
        if places not in self._rotaries:  # from Python ints, built on the device: no host copy, no sync
            place = device_ints(places, self.keys.device)
            self._rotaries[places] = TokenRotary(rope_angles(self.head_dim, place, *self.frame_grid))
        return self._rotaries[places]

    def attend_fn(self, layer: int, slots: ChunkSlots):
        """Write the chunk's raw k/v, attend over the filled prefix with keys rotated by their place in V."""
        keys, values = self.keys[layer], self.values[layer]
        rotary = self._key_rotary(slots)

        def attend(q, k, v, need_output=True):
            self._write(layer, slots, k, v)
            n = slots.attend_tokens
            if need_output:
                return attention(q, rotary.apply(keys[:, :n]), values[:, :n], backend=self.backend)

        return attend

    def replay_attend_fns(self, index: torch.Tensor) -> list:
        """Steady chunks: write k/v at `index`, attend over every slot, keys rotated by static cos/sin tables."""
        if self._replay_rotary is None:
            shape = (self.keys.shape[2], 1, self.head_dim // 2)
            zeros = torch.zeros(shape, dtype=torch.float32, device=self.keys.device)
            self._replay_rotary = TokenRotary.from_tables(zeros, zeros.clone())
        rotary = self._replay_rotary

        def make(layer):
            keys, values = self.keys[layer], self.values[layer]

            def attend(q, k, v, need_output=True):
                keys.index_copy_(1, index, k)
                values.index_copy_(1, index, v)
                if need_output:
                    return attention(q, rotary.apply(keys), values, backend=self.backend)

            return attend

        return [make(layer) for layer in range(self.keys.shape[0])]

    def prepare_replay(self, slots: ChunkSlots) -> None:
        """Copy this ring phase's key rotation into the static tables."""
        table = self._key_rotary(slots)
        self._replay_rotary.cos.copy_(table.cos)
        self._replay_rotary.sin.copy_(table.sin)

    def recache_attend_fn(self, layer: int, slots: ChunkSlots, index: torch.Tensor):
        """Attend to the frames in `index` (in temporal order, the chunk last), each at its place in that list."""
        keys, values = self.keys[layer], self.values[layer]
        frames = index.numel() // self.tokens_per_frame
        places = torch.arange(frames, device=keys.device) - (frames - slots.num_frames)
        rotary = TokenRotary(rope_angles(self.head_dim, places, *self.frame_grid))

        def attend(q, k, v, need_output=True):
            self._write(layer, slots, k, v)
            if need_output:
                return attention(q, rotary.apply(keys[:, index]), values[:, index], backend=self.backend)

        return attend


@dataclass(frozen=True)
class _Plan:
    """What one chunk of a Deep Forcing stream does: Python decisions + device tensors shared by the layers.
    The tensors depend only on positions relative to the chunk, so the steady state cycles through a few."""

    compress: bool
    history_shift: int  # first history frame once this chunk is committed, minus the chunk's first frame
    attends_top: bool  # the top-C tokens are attended (once a compression has chosen them)
    main_rotary: TokenRotary  # raw [sink | ring] keys -> keys at their positions relative to the chunk
    keep: torch.Tensor  # [kept tokens]: the [sink | ring] slots attended, in order (no mask: see _attend)
    kept_rotary: TokenRotary  # main_rotary's rows of the kept slots
    candidates: torch.Tensor  # [top + sink + ring tokens]: True = may be kept by the compression
    main_place: torch.Tensor  # [sink + ring tokens]: frame held by each slot, relative to the chunk's first


class DeepForcingCache(KVCache):
    """Deep Forcing's cache: [sink | ring of history + chunk] raw K/V plus the top-C tokens (committed | scratch)."""

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
        # index 0 holds the committed state, index 1 the chunk's scratch copy; commit copies 1 -> 0 on the
        # device, so which buffer a forward reads never depends on how many compressions happened (one graph)
        top = (num_layers, 2, batch, self.top_tokens)
        self.top_keys = torch.zeros(*top, num_heads, head_dim, dtype=dtype, device=device)
        self.top_values = torch.zeros(*top, num_heads, head_dim, dtype=dtype, device=device)
        self.top_frame = torch.zeros(top, dtype=torch.long, device=device)  # absolute frames
        self.top_token = torch.zeros(top, dtype=torch.long, device=device)
        # sum of the rotated queries of the last recent - chunk frames of the latest forward, per layer
        self.query_tail = torch.zeros(num_layers, 2, batch, num_heads, head_dim, dtype=torch.float32, device=device)
        self.start = torch.zeros((), dtype=torch.long, device=device)  # the chunk's first frame, on the device
        main = self.keys.shape[2]
        self.main_token = torch.arange(tokens_per_frame, device=device).repeat(main // tokens_per_frame)
        zero = torch.zeros(1, dtype=torch.long, device=device)
        self.tail_shift = TokenRotary(token_angles(head_dim, zero - chunk_frames, zero, zero))
        self._plans = {}  # relative layout -> _Plan tensors, built once each
        self._replay = None  # static copies of a plan's tensors that replayed forwards read
        self._replay_kept = {}  # count of kept slots -> static (keep, kept_rotary): the count is part of the variant
        self._replay_plan = self._variant = None
        self.reset()

    @property
    def nbytes(self) -> int:
        """Bytes held by all K/V buffers (main, top-C committed + scratch) and the query tails."""
        return super().nbytes + self.top_keys.nbytes + self.top_values.nbytes + self.query_tail.nbytes

    def chunk_rope(self, head_dim, start_frame, grid, device=None) -> RotaryTable:
        """Queries at 0..n-1; keys are rotated by the cache relative to the chunk's first frame."""
        return QueryRotary.for_grid(head_dim, 0, *grid, device=device)

    def plan(self, slots: ChunkSlots) -> _Plan:
        """The chunk's compression decision, positions and kept slots (Python ints; tensors memoised by layout)."""
        p, n, tpf = self.policy, slots.num_frames, self.tokens_per_frame
        start, sink, ring = slots.start_frame, p.sink_frames, self.ring_frames
        compressed = self.compressed_at is not None
        held = sink + (p.top_frames if compressed else 0) + (start - self.history_start) + n
        compress = held > p.max_frames
        history_start = start + n - p.recent_frames if compress else self.history_start
        sink_start = (start if compress else self.compressed_at) - p.budget_frames if compress or compressed else 0
        last = start + n - 1
        ring_frame = [last - (last - sink - slot) % ring for slot in range(ring)]  # the newest in each ring slot
        place = tuple(sink_start + i - start for i in range(sink)) + tuple(f - start for f in ring_frame)
        valid = tuple(i <= last for i in range(sink)) + tuple(f >= history_start for f in ring_frame)
        candidate = (False,) * sink + tuple(self.history_start <= f < start + n - p.recent_frames for f in ring_frame)
        key = (compress, compressed, self.history_start - start, place, valid, candidate)
        if key not in self._plans:  # a few layouts in all: the steady state repeats them
            device, top = self.keys.device, self.top_tokens

            def per_token(flags):
                return _per_token(tpf, device_ints(flags, device).bool())

            main_place = device_ints(place, device)
            main_rotary = TokenRotary(rope_angles(self.head_dim, main_place, *self.frame_grid))
            kept_slots = device_ints([slot for slot, ok in enumerate(valid) if ok], device)
            keep = (kept_slots[:, None] * tpf + torch.arange(tpf, device=device)).flatten()
            self._plans[key] = _Plan(
                compress=compress, history_shift=history_start - start, attends_top=compress or compressed,
                main_rotary=main_rotary, keep=keep,
                kept_rotary=TokenRotary.from_tables(main_rotary.cos[keep], main_rotary.sin[keep]),
                candidates=torch.cat([per_token((compressed,) * p.top_frames), per_token(candidate)]),
                main_place=_per_token(tpf, main_place))
        return self._plans[key]

    def _top_rotary(self, layer: int, buffer: int) -> TokenRotary:
        width = self.frame_grid[1]
        token = self.top_token[layer, buffer]
        return TokenRotary(token_angles(self.head_dim, self.top_frame[layer, buffer] - self.start, token // width,
                                        token % width))

    def _compress(self, layer: int, plan: _Plan, q: torch.Tensor, main_keys: torch.Tensor) -> None:
        # the committed top-C (0) and the main buffer -> the scratch top-C (1), all on the device
        tail = self.tail_shift.apply(self.query_tail[layer, 0][:, None])[:, 0]
        votes = q.float().sum(1) + tail  # [B, heads, head_dim]: the recent queries, summed (phi is linear in q)
        top_keys = self._top_rotary(layer, 0).apply(self.top_keys[layer, 0])
        keys = torch.cat([top_keys.float(), main_keys.float()], dim=1)
        scores = torch.einsum("bhd,blhd->bl", votes, keys).masked_fill(~plan.candidates, float("-inf"))
        chosen = scores.topk(self.top_tokens, dim=1).indices  # [B, C], on the device
        heads = chosen[..., None, None].expand(-1, -1, *self.keys.shape[-2:])
        for buffer, main in ((self.top_keys, self.keys), (self.top_values, self.values)):
            torch.gather(torch.cat([buffer[layer, 0], main[layer]], dim=1), 1, heads, out=buffer[layer, 1])
        batch = chosen.shape[0]
        frames = plan.main_place + self.start
        for buffer, main in ((self.top_frame, frames), (self.top_token, self.main_token)):
            torch.gather(torch.cat([buffer[layer, 0], main.expand(batch, -1)], dim=1), 1, chosen, out=buffer[layer, 1])

    def _attend(self, layer: int, plan: _Plan, compress_now: bool, q, k, v, need_output=True) -> torch.Tensor:
        """After the chunk's k/v are written: compress if this is the compressing forward, record the query
        tail, attend over sink + history + chunk + top-C, each key at its position relative to the chunk."""
        if compress_now:
            self._compress(layer, plan, q, plan.main_rotary.apply(self.keys[layer]))
        tail_tokens = (self.policy.recent_frames - self.chunk_frames) * self.tokens_per_frame
        torch.sum(q[:, q.shape[1] - tail_tokens:].float(), 1, out=self.query_tail[layer, 1])
        if not need_output:
            return None
        # only the attended slots are gathered and rotated: attention with no mask runs on the fastest kernel
        # (with a boolean mask PyTorch falls back to its memory-efficient one, ~3x slower on Hopper)
        keys = plan.kept_rotary.apply(self.keys[layer].index_select(1, plan.keep))
        values = self.values[layer].index_select(1, plan.keep)
        if plan.attends_top:
            buffer = 1 if plan.compress else 0
            keys = torch.cat([keys, self._top_rotary(layer, buffer).apply(self.top_keys[layer, buffer])], dim=1)
            values = torch.cat([values, self.top_values[layer, buffer]], dim=1)
        return attention(q, keys, values, backend=self.backend)

    def attend_fn(self, layer: int, slots: ChunkSlots):
        """Write the chunk's raw k/v; on the chunk's first forward compress if due; attend (see _attend)."""
        plan = self.plan(slots)
        self.start.fill_(slots.start_frame)
        first = [True]

        def attend(q, k, v, need_output=True):
            self._write(layer, slots, k, v)
            out = self._attend(layer, plan, plan.compress and first[0], q, k, v, need_output)
            first[0] = False
            return out

        return attend

    def replay_attend_fns(self, index: torch.Tensor) -> list:
        """Steady chunks: write k/v at `index`, then _attend over static copies of the chunk's plan tensors."""
        if self._replay is None:
            main, top, device = self.keys.shape[2], self.top_tokens, self.keys.device
            cos = torch.zeros(main, 1, self.head_dim // 2, device=device)
            self._replay = dict(candidates=torch.zeros(top + main, dtype=torch.bool, device=device),
                                main_place=torch.zeros(main, dtype=torch.long, device=device),
                                main_rotary=TokenRotary.from_tables(cos, cos.clone()))

        def make(layer):
            def attend(q, k, v, need_output=True):
                self.keys[layer].index_copy_(1, index, k)
                self.values[layer].index_copy_(1, index, v)
                compress_now, compress, attends_top, kept = self._variant
                plan = _Plan(compress=compress, history_shift=None, attends_top=attends_top,
                             **self._replay, **self._replay_kept[kept])
                return self._attend(layer, plan, compress_now, q, k, v, need_output)

            return attend

        return [make(layer) for layer in range(self.keys.shape[0])]

    def prepare_replay(self, slots: ChunkSlots) -> None:
        """Copy the chunk's plan tensors and first frame into the static buffers replayed forwards read."""
        plan = self._replay_plan = self.plan(slots)
        self.start.fill_(slots.start_frame)
        kept = len(plan.keep)
        if kept not in self._replay_kept:  # once per count of kept slots (a few, cycled in the steady state)
            self._replay_kept[kept] = dict(keep=torch.zeros_like(plan.keep), kept_rotary=TokenRotary.from_tables(
                torch.zeros_like(plan.kept_rotary.cos), torch.zeros_like(plan.kept_rotary.sin)))
        static = self._replay_kept[kept]
        for name in ("candidates", "main_place"):
            self._replay[name].copy_(getattr(plan, name))
        static["keep"].copy_(plan.keep)
        rotaries = ((plan.main_rotary, self._replay["main_rotary"]), (plan.kept_rotary, static["kept_rotary"]))
        for source, target in rotaries:
            target.cos.copy_(source.cos)
            target.sin.copy_(source.sin)

    def replay_variant(self, step: int):
        """(compresses in this forward, attends to the new top-C, attends to any top-C, slots kept): the chunk's
        first forward compresses if due; each count of kept slots is a graph of its own (static shapes)."""
        plan = self._replay_plan
        self._variant = (plan.compress and step == 0, plan.compress, plan.attends_top, len(plan.keep))
        return self._variant

    def recache_attend_fn(self, layer: int, slots: ChunkSlots, index: torch.Tensor):
        """Deep Forcing keeps no fixed frame set to re-cache (supports_recache is False)."""
        raise NotImplementedError("deep_forcing does not re-cache on a prompt switch")

    def commit(self, slots: ChunkSlots) -> None:
        """Make a written chunk part of the history: its query tail, and a compressing chunk's top-C, become the
        committed ones (device copies)."""
        plan = self.plan(slots)
        super().commit(slots)
        if plan.compress:
            for buffer in (self.top_keys, self.top_values, self.top_frame, self.top_token):
                buffer[:, 0].copy_(buffer[:, 1])
            self.compressed_at = slots.start_frame
        self.query_tail[:, 0].copy_(self.query_tail[:, 1])
        self.history_start = slots.start_frame + plan.history_shift

    def reset(self) -> None:
        """Forget the history (the buffers stay allocated)."""
        super().reset()
        self.compressed_at = None
        self.history_start = self.policy.sink_frames
