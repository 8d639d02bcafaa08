"""The KV cache of a causal stream: buffers allocated once, a fixed attention sink plus a ring buffer.

Contract. A chunk of latent frames [start, start+n) attends to itself (bidirectionally), to the first
`sink_frames` frames of the stream (the attention sink), and to the last `window_frames` frames before
it (the rolling window); `window_frames=None` keeps the whole history (Self-Forcing). Keys are stored
after RoPE at their absolute positions, so slot order does not matter and no mask is needed.

Layout per layer: [sink slots | ring of window_frames + chunk_frames slots]. A chunk writes its K/V into
the ring slots of the frames that just left the window (never the window itself), then attends over the
filled prefix [0, attend_tokens). Because the ring fills from its start, that prefix is always
contiguous: a plain slice, no copies, no masks, no host syncs. Denoising steps and the t = 0 pass of
the same chunk rewrite the same slots; `commit` only advances a Python int, so an interrupted chunk
leaves the stream exactly as it was (it only touched slots outside the window).
"""

from dataclasses import dataclass

import torch

from .attention import attention
from .rope import RotaryTable


@dataclass(frozen=True)
class CachePolicy:
    """Which past frames a chunk sees: the first `sink_frames` forever + the last `window_frames` (None: all)."""

    sink_frames: int = 0
    window_frames: int = None

    def __post_init__(self):
        if self.sink_frames < 0 or (self.window_frames is not None and self.window_frames < 0):
            raise ValueError(f"sink and window sizes must be >= 0, got {self}")

    def visible_past(self, start_frame: int) -> list:
        """The earlier frames a chunk starting at `start_frame` attends to, in order."""
        if self.window_frames is None:
            return list(range(start_frame))
        sink = range(min(self.sink_frames, start_frame))
        window = range(max(self.sink_frames, start_frame - self.window_frames), start_frame)
        return list(sink) + list(window)


@dataclass(frozen=True)
class InfinityPolicy(CachePolicy):
    """LongLive-infinity: LongLive's sink + window, keys rotated by their place in the window (relative RoPE)."""

    def __post_init__(self):
        super().__post_init__()
        if self.window_frames is None:
            raise ValueError("the infinity policy needs a window (it exists to make endless streams stay in range)")


@dataclass(frozen=True)
class DeepForcingPolicy(CachePolicy):
    """Deep Forcing: a deep sink re-aligned to the timeline + participative compression to a token budget."""

    budget_frames: int = 16
    recent_frames: int = 4
    max_frames: int = 21

    def __post_init__(self):
        super().__post_init__()
        s, n, r, m = self.sink_frames, self.budget_frames, self.recent_frames, self.max_frames
        if not (0 <= s and r >= 1 and s + r <= n <= m) or self.window_frames != m - s:
            raise ValueError(f"deep_forcing needs sink + recent <= budget <= max_frames (frames), got sink {s}, "
                             f"recent {r}, budget {n}, max_frames {m}")

    @property
    def top_frames(self) -> int:
        """C in frames' worth of tokens: the budget left after the sink and the recent frames."""
        return self.budget_frames - self.sink_frames - self.recent_frames

    def visible_past(self, start_frame: int) -> list:
        """Not a fixed set of frames: which tokens stay depends on attention (participative compression)."""
        raise NotImplementedError("deep_forcing keeps tokens chosen by attention, not a fixed set of frames")


def long_horizon_policy(preset: str, chunk_frames: int = 3, **params) -> CachePolicy:
    """'infinity' (LongLive-infinity: sink 3, 12 frames attended) or 'deep_forcing' (sink_frames=10,
    budget_frames=16, recent_frames=4, max_frames=21 by default; top_frames=C sets the budget to sink + recent + C)."""
    if preset == "infinity":
        sink = params.pop("sink_frames", 3)
        attended = params.pop("attended_frames", 12)
        if params:
            raise ValueError(f"infinity takes sink_frames and attended_frames, not {sorted(params)}")
        return InfinityPolicy(sink, max(0, attended - sink - chunk_frames))
    if preset == "deep_forcing":
        sink = params.pop("sink_frames", 10)
        recent = params.pop("recent_frames", 4)
        most = params.pop("max_frames", 21)
        top = params.pop("top_frames", None)  # C in frames: the budget left after the sink and the recent frames
        if top is not None and "budget_frames" in params:
            raise ValueError("deep_forcing takes top_frames (C) or budget_frames (sink + recent + C), not both")
        budget = params.pop("budget_frames", 16 if top is None else sink + recent + top)
        if params:
            raise ValueError(f"deep_forcing takes sink_frames, top_frames (or budget_frames), recent_frames and "
                             f"max_frames, not {sorted(params)}")
        if top is not None and (top < 0 or sink < 0 or budget > most):
            raise ValueError(f"deep_forcing keeps sink + recent + top frames within its {most}-frame cache "
                             f"(max_frames), got sink {sink} + recent {recent} + top {top} = {budget}: lower "
                             f"sink_frames or top_frames")
        if not chunk_frames <= recent <= 2 * chunk_frames:
            raise ValueError(f"deep_forcing needs chunk_frames <= recent_frames <= 2 * chunk_frames (the recent "
                             f"queries come from this chunk and the previous one), got recent {recent}, "
                             f"chunk {chunk_frames}")
        return DeepForcingPolicy(sink, most - sink, budget, recent, most)
    raise ValueError(f"unknown long-horizon policy {preset!r}")



POLICY_NAMES = ("longlive", "motionstream", "full", "infinity", "deep_forcing")


def cache_policy(preset: str, chunk_frames: int = 3, **params) -> CachePolicy:
    """Named policies: 'full' (Self-Forcing), 'longlive' (sink 3, 12 frames attended in all),
    'motionstream' (c3s1w1: one chunk of sink, one chunk of window), and the long-horizon 'infinity'
    and 'deep_forcing' (caches in models/wan/long_horizon.py; they take their parameters as keywords)."""
    if preset in ("infinity", "deep_forcing"):
        return long_horizon_policy(preset, chunk_frames, **params)
    if params:
        raise ValueError(f"cache policy {preset!r} takes no parameters, got {sorted(params)}")
    if preset == "full":
        return CachePolicy(0, None)
    if preset == "longlive":
        return CachePolicy(3, max(0, 12 - 3 - chunk_frames))
    if preset == "motionstream":
        return CachePolicy(chunk_frames, chunk_frames)
    raise ValueError(f"unknown cache policy {preset!r}; choose one of {', '.join(POLICY_NAMES)}")


def cache_policy_from_text(text: str, chunk_frames: int = 3) -> CachePolicy:
    """A policy from its text form: a name, or a name and keyword integers ('deep_forcing:sink_frames=12,budget_frames=18')."""
    name, _, rest = text.strip().partition(":")
    params = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, equals, value = item.partition("=")
        if not equals or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"cache policy parameters are name=integer pairs separated by commas, got {item!r} "
                             f"in {text!r} (e.g. 'deep_forcing:sink_frames=12,budget_frames=18')")
        params[key.strip()] = int(value)
    return cache_policy(name.strip(), chunk_frames, **params)


@dataclass(frozen=True)
class ChunkSlots:
    """Where one chunk's tokens go: (source token, slot token, length) runs, and the attended prefix."""

    start_frame: int
    num_frames: int
    runs: tuple
    attend_tokens: int


class CacheFullError(RuntimeError):
    """A full-history cache has no room for the next chunk."""


class KVCache:
    """K/V buffers [layers, B, slots, heads, head_dim] for one stream, allocated once."""

    supports_recache = True  # a prompt switch can recompute the window's K/V (see WanStream.set_prompt)

    def __init__(self, policy: CachePolicy, *, chunk_frames: int, tokens_per_frame: int, num_layers: int,
                 batch: int, num_heads: int, head_dim: int, max_frames: int = None, dtype=torch.bfloat16,
                 device=None):
        self.policy = policy
        self.tokens_per_frame = tokens_per_frame
        if policy.window_frames is None:
            if max_frames is None:
                raise ValueError("a full-history cache needs max_frames (the longest stream it must hold)")
            self.ring_frames = max(0, max_frames - policy.sink_frames)
        else:
            self.ring_frames = policy.window_frames + chunk_frames
        self.capacity_frames = policy.sink_frames + self.ring_frames
        shape = (num_layers, batch, self.capacity_frames * tokens_per_frame, num_heads, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.frames = 0  # frames committed so far: a Python int, never a tensor
        self.backend = "sdpa"  # the attention kernel: the model's (set by the stream)
        self._write_indices = {}

    @property
    def nbytes(self) -> int:
        """Bytes held by the K and V buffers."""
        return self.keys.nbytes + self.values.nbytes

    def chunk_rope(self, head_dim: int, start_frame: int, grid: tuple, device=None) -> RotaryTable:
        """The RoPE of a chunk's queries and keys: absolute positions (keys are cached rotated)."""
        return RotaryTable.for_grid(head_dim, start_frame, *grid, device=device)

    def frame_slot(self, frame: int) -> int:
        """The buffer slot (in frames) that holds `frame`."""
        sink = self.policy.sink_frames
        return frame if frame < sink else sink + (frame - sink) % self.ring_frames

    def slots(self, start_frame: int, num_frames: int) -> ChunkSlots:
        """Plan the writes of the chunk [start_frame, start_frame + num_frames) (pure Python ints)."""
        end = start_frame + num_frames
        if self.policy.window_frames is None and end > self.capacity_frames:
            raise CacheFullError(f"the full-history KV cache holds {self.capacity_frames} latent frames and the "
                                 f"stream has reached {start_frame}; use a sink + window policy for longer streams")
        n = self.tokens_per_frame
        runs = []
        for offset in range(num_frames):
            slot = self.frame_slot(start_frame + offset)
            if runs and runs[-1][1] + runs[-1][2] == slot * n:
                runs[-1][2] += n
            else:
                runs.append([offset * n, slot * n, n])
        sink = self.policy.sink_frames
        filled = min(sink, end) + min(self.ring_frames, max(0, end - sink))
        return ChunkSlots(start_frame, num_frames, tuple(tuple(r) for r in runs), filled * n)

    def _write(self, layer: int, slots: ChunkSlots, k: torch.Tensor, v: torch.Tensor) -> None:
        for source, slot, length in slots.runs:
            self.keys[layer, :, slot:slot + length].copy_(k[:, source:source + length])
            self.values[layer, :, slot:slot + length].copy_(v[:, source:source + length])

    def attend_fn(self, layer: int, slots: ChunkSlots):
        """attend(q, k, v) for one layer: write the chunk's k/v into its slots, attend over the filled prefix."""
        keys, values = self.keys[layer], self.values[layer]

        def attend(q, k, v, need_output=True):
            self._write(layer, slots, k, v)
            if need_output:
                return attention(q, keys[:, :slots.attend_tokens], values[:, :slots.attend_tokens], backend=self.backend)

        return attend

    def write_index(self, slots: ChunkSlots) -> torch.Tensor:
        """Slot index (tokens) of each of the chunk's tokens, a device tensor made once per ring phase."""
        key = slots.runs
        if key not in self._write_indices:  # one per ring phase (deep_forcing: ~14), made on the device: no
            # host copy, so a new phase met mid-stream never waits for the GPU
            device = self.keys.device
            self._write_indices[key] = torch.cat([torch.arange(slot, slot + length, device=device)
                                                  for _, slot, length in slots.runs])
        return self._write_indices[key]

    def is_steady(self, slots: ChunkSlots) -> bool:
        """True when the chunk attends over every slot (the cache is full): its shapes repeat forever."""
        return slots.attend_tokens == self.keys.shape[2]

    def index_attend_fn(self, layer: int, index: torch.Tensor):
        """attend(q, k, v) for a steady-state chunk: write k/v at the slots in `index` (a device tensor, so one
        CUDA graph serves every ring phase), then attend over the whole buffer."""
        keys, values = self.keys[layer], self.values[layer]

        def attend(q, k, v, need_output=True):
            keys.index_copy_(1, index, k)
            values.index_copy_(1, index, v)
            if need_output:
                return attention(q, keys, values, backend=self.backend)

        return attend

    # The replay interface of models/wan/fast_path.ChunkGraphs: a steady chunk's forwards read only static
    # buffers, refilled per chunk by device copies, so one captured graph serves every chunk of its variant.
    def replay_attend_fns(self, index: torch.Tensor) -> list:
        """attend(q, k, v) per layer for replayed forwards (`index`: the static slot index of the chunk's tokens)."""
        return [self.index_attend_fn(layer, index) for layer in range(self.keys.shape[0])]

    def prepare_replay(self, slots: ChunkSlots) -> None:
        """Fill the static buffers that replayed forwards of this chunk read (device copies only)."""

    def replay_variant(self, step: int):
        """Set up and name the graph variant of forward `step` of the prepared chunk (None: one for all)."""
        return None

    def resident_frames(self, window_only: bool = True) -> list:
        """Committed frames whose K/V are held: the sink and the window. The ring's oldest chunk is scratch
        space (the next chunk writes there, and a chunk that failed already did), so it only counts with
        window_only=False, for state written on commit alone (the latent history)."""
        sink, window = self.policy.sink_frames, self.policy.window_frames
        kept = self.ring_frames if window is None or not window_only else window
        return list(range(min(sink, self.frames))) + list(range(max(sink, self.frames - kept), self.frames))

    def frame_slot_runs(self, slots: ChunkSlots) -> list:
        """slots.runs in frames instead of tokens: (source frame, slot frame, frames)."""
        n = self.tokens_per_frame
        return [(source // n, slot // n, length // n) for source, slot, length in slots.runs]

    def switch_frames(self, end: int) -> range:
        """The frames a LongLive prompt switch at frame `end` re-caches: all of them while they fit the cache
        (sink included), else the ring's (the last ring_frames; the sink keeps its K/V)."""
        if end <= self.capacity_frames:
            return range(0, end)
        return range(end - self.ring_frames, end)

    def recache_index(self, slots: ChunkSlots, visible_frames: list) -> torch.Tensor:
        """Token indices of `visible_frames` + the chunk, for recache_attend_fn (build once per chunk)."""
        n = self.tokens_per_frame
        frames = [self.frame_slot(f) for f in visible_frames]
        frames += [self.frame_slot(slots.start_frame + i) for i in range(slots.num_frames)]
        return torch.tensor([f * n + i for f in frames for i in range(n)], device=self.keys.device)

    def recache_attend_fn(self, layer: int, slots: ChunkSlots, index: torch.Tensor):
        """Like attend_fn, but attending only to the tokens in `index` (re-caching an old chunk while newer
        frames sit in the ring). Gathers tokens: for rare prompt switches, not the chunk loop."""
        keys, values = self.keys[layer], self.values[layer]

        def attend(q, k, v, need_output=True):
            self._write(layer, slots, k, v)
            if need_output:
                return attention(q, keys[:, index], values[:, index], backend=self.backend)

        return attend

    def commit(self, slots: ChunkSlots) -> None:
        """Make a written chunk part of the stream's history."""
        if slots.start_frame != self.frames:
            raise RuntimeError(f"chunk starts at frame {slots.start_frame} but the cache holds {self.frames}")
        self.frames = slots.start_frame + slots.num_frames

    def reset(self) -> None:
        """Forget the history (the buffers stay allocated)."""
        self.frames = 0
