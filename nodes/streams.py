"""The stream registry: state that lives across ComfyUI queue runs, keyed by a stream id.

A ComfyUI queue run executes the graph once. A streaming node keeps its state (KV cache, VAE caches,
previous frames, RNG cursor, ...) here, never in class attributes, so that N queued runs continue one
stream. Entries are recreated when their signature (model, resolution, seed, ...) changes.

Memory. All streams of all kinds share one byte budget (STREAMVACE_STREAM_BUDGET: '8GB', '512MB', a byte
count, or a share of the compute device's memory such as '40%'; default 40%). Past it, the least recently
used streams are dropped, with a log line naming them. When ComfyUI needs device memory (its free_memory,
e.g. for another workflow's model) streams move to the CPU, least recently used first, and move back when
next used; ComfyUI's "Unload models" / Free (unload_all_models) drops every stream. A dropped stream's
next run starts over from its first frame and logs why.
"""

import gc
import itertools
import logging
import os
import threading
from typing import Any, Callable, Hashable

import torch

from ..models.memory import move_state, state_nbytes
from . import host

BUDGET_ENV = "STREAMVACE_STREAM_BUDGET"
DEFAULT_BUDGET = "40%"  # of the compute device: the rest is for models and activations
_REMEMBER_DROPPED = 256  # dropped ids remembered per kind, for the "starts over" message

_LOCK = threading.RLock()  # one lock for every registry: budget and memory pressure act across kinds
_CLOCK = itertools.count()
log = logging.getLogger(__name__)


class _Entry:
    __slots__ = ("signature", "state", "used", "parked_from")

    def __init__(self, signature, state):
        self.signature, self.state, self.used, self.parked_from = signature, state, next(_CLOCK), None


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2 ** 30:.2f} GiB"


def _close(state) -> None:
    close = getattr(state, "close", None)
    if callable(close):
        close()


class StreamRegistry:
    """Named store of per-stream state objects for one kind of stream (e.g. 'wan', 'depth')."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries = {}
        self._dropped = {}  # stream id -> why it was dropped (until its next run starts it over)

    def _touch(self, stream_id: str, entry: _Entry) -> None:
        entry.used = next(_CLOCK)
        if entry.parked_from is not None:
            nbytes = move_state(entry.state, entry.parked_from)
            log.info("StreamVACE: moved the %s stream '%s' back to %s (%s)", self.kind, stream_id,
                     entry.parked_from, _gib(nbytes))
            entry.parked_from = None

    def get(self, stream_id: str):
        """The state of a stream (on its device again if it was parked), or None."""
        with _LOCK:
            entry = self._entries.get(stream_id)
            if entry is None:
                return None
            self._touch(stream_id, entry)
            return entry.state

    def replaced(self, stream_id: str, signature: Hashable):
        """The state that get_or_create(stream_id, signature, ...) would replace, or None."""
        entry = self._entries.get(stream_id)
        return None if entry is None or entry.signature == signature else entry.state

    def get_or_create(self, stream_id: str, signature: Hashable, factory: Callable[[], Any]):
        """The stream's state; a fresh one from `factory` if absent or if its signature changed.

        The old state is replaced only once `factory()` succeeded: a run that fails (bad settings, a failed
        allocation) never loses the stream it names. Validate settings before calling this, so the common
        failures cost nothing; only when the new state does not fit beside the old one (out of memory) is
        the old one freed first and the creation tried once more.
        """
        if not stream_id:
            raise ValueError(f"{self.kind} stream id must not be empty: name the stream (e.g. 'main').")
        with _LOCK:
            entry = self._entries.get(stream_id)
            if entry is not None and entry.signature == signature:
                self._touch(stream_id, entry)
            else:
                try:
                    state = factory()
                except (MemoryError, torch.OutOfMemoryError):
                    if entry is None:
                        raise
                    self._remove(stream_id)  # the new state needs the old one's memory
                    entry = None
                    gc.collect()
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    state = factory()
                entry = self._install(stream_id, signature, state)
            enforce_budget(keep=(self.kind, stream_id))
            return entry.state

    def run(self, stream_id: str, signature: Hashable, factory: Callable[[], Any], call: Callable[[Any], Any],
            fresh: bool = False):
        """call(state) on the stream's state. A new state (`fresh`, absent, or a changed signature) replaces the
        old one only once call(state) succeeded: a run with a reset or new settings that fails keeps the stream."""
        if not stream_id:
            raise ValueError(f"{self.kind} stream id must not be empty: name the stream (e.g. 'main').")
        with _LOCK:
            entry = self._entries.get(stream_id)
            if not fresh and entry is not None and entry.signature == signature:
                self._touch(stream_id, entry)
                state = entry.state
            else:
                state = None
        if state is not None:
            return call(state)  # a state continued in place keeps itself unchanged when a call fails
        state = factory()
        result = call(state)
        with _LOCK:
            self._install(stream_id, signature, state)
            enforce_budget(keep=(self.kind, stream_id))
        return result

    def _install(self, stream_id: str, signature: Hashable, state) -> _Entry:
        """Put a new state in place of the stream's old one (closed), saying so if the stream had been dropped."""
        self._remove(stream_id)
        entry = self._entries[stream_id] = _Entry(signature, state)
        why = self._dropped.pop(stream_id, None)
        if why is not None:
            log.warning("StreamVACE: the %s stream '%s' was dropped earlier (%s); it starts over from its "
                        "first frame.", self.kind, stream_id, why)
        return entry

    def was_dropped(self, stream_id: str):
        """Why the stream was dropped, if it was and has not started over yet (else None)."""
        return self._dropped.get(stream_id)

    def _remove(self, stream_id: str) -> bool:
        entry = self._entries.pop(stream_id, None)
        if entry is not None:
            _close(entry.state)
        return entry is not None

    def _drop(self, stream_id: str, why: str) -> None:
        if self._remove(stream_id):
            self._dropped[stream_id] = why
            while len(self._dropped) > _REMEMBER_DROPPED:
                del self._dropped[next(iter(self._dropped))]

    def reset(self, stream_id: str) -> bool:
        """Forget a stream; True if it existed."""
        with _LOCK:
            self._dropped.pop(stream_id, None)
            return self._remove(stream_id)

    def clear(self) -> None:
        """Forget every stream of this kind."""
        with _LOCK:
            for stream_id in list(self._entries):
                self._remove(stream_id)
            self._dropped.clear()

    def ids(self) -> list:
        """The ids of the live streams."""
        return sorted(self._entries)

    def nbytes(self, stream_id: str) -> int:
        """Bytes the stream's state holds (0 if there is no such stream)."""
        entry = self._entries.get(stream_id)
        return 0 if entry is None else state_nbytes(entry.state)


_REGISTRIES = {}


def registry(kind: str) -> StreamRegistry:
    """The process-wide registry for one kind of stream."""
    with _LOCK:
        if kind not in _REGISTRIES:
            _REGISTRIES[kind] = StreamRegistry(kind)
        return _REGISTRIES[kind]


def _by_age() -> list:
    """(registry, stream id, entry) of every stream, least recently used first."""
    found = [(reg, sid, entry) for reg in _REGISTRIES.values() for sid, entry in reg._entries.items()]
    return sorted(found, key=lambda item: item[2].used)


def parse_budget(text: str, device_bytes: int) -> int:
    """A budget in bytes from '8GB', '512MB', '40%' (of device_bytes) or a plain byte count."""
    value = text.strip().upper().replace(" ", "").replace("IB", "B")
    units = {"%": device_bytes / 100, "TB": 2 ** 40, "GB": 2 ** 30, "MB": 2 ** 20, "KB": 2 ** 10, "B": 1}
    for unit, scale in units.items():
        if value.endswith(unit):
            number = value[:-len(unit)]
            break
    else:
        number, scale = value, 1
    try:
        result = float(number) * scale
    except ValueError:
        raise ValueError(f"{BUDGET_ENV}={text!r} is not a memory size: use e.g. '8GB', '512MB', '40%' or a byte "
                         "count") from None
    if result < 0:
        raise ValueError(f"{BUDGET_ENV}={text!r} must not be negative")
    return int(result)


def budget_bytes() -> int:
    """The streams' byte budget: STREAMVACE_STREAM_BUDGET, or a share of the compute device's memory."""
    return parse_budget(os.environ.get(BUDGET_ENV, DEFAULT_BUDGET), host.total_memory())


def held_bytes() -> int:
    """Bytes all streams hold, wherever they are."""
    with _LOCK:
        return sum(state_nbytes(entry.state) for _, _, entry in _by_age())


def enforce_budget(keep=None) -> list:
    """Drop least recently used streams until all fit the budget (never `keep` = (kind, id)); their names."""
    with _LOCK:
        budget = budget_bytes()
        sizes = [(reg, sid, state_nbytes(entry.state)) for reg, sid, entry in _by_age()]
        held = sum(size for _, _, size in sizes)
        if held <= budget:
            return []
        dropped, total = [], held
        for reg, sid, size in sizes:
            if total <= budget:
                break
            if (reg.kind, sid) == keep or size == 0:
                continue
            reg._drop(sid, f"the stream memory budget of {_gib(budget)} was exceeded")
            dropped.append(f"{reg.kind}:{sid} ({_gib(size)})")
            total -= size
        if dropped:
            log.warning("StreamVACE: streams held %s, over the budget of %s (%s); dropped the least recently used: "
                        "%s", _gib(held), _gib(budget), BUDGET_ENV, ", ".join(dropped))
        return dropped


def park_streams(device, enough: Callable[[], bool]) -> list:
    """Move streams off `device` to the CPU, least recently used first, until enough() (ComfyUI needs memory)."""
    device = torch.device(device)
    return [] if device.type == "cpu" else _park(device, enough)


def _park(device: torch.device, enough, to="cpu", resident=state_nbytes) -> list:
    parked = []
    with _LOCK:
        for reg, sid, entry in _by_age():
            if enough():
                break
            if entry.parked_from is not None or resident(entry.state, device) == 0:
                continue
            nbytes = move_state(entry.state, to)
            entry.parked_from = device
            parked.append(f"{reg.kind}:{sid} ({_gib(nbytes)})")
    if parked:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # give the freed blocks back, so ComfyUI sees them free
        log.info("StreamVACE: ComfyUI needs memory on %s; moved streams to %s until they run again: %s",
                 device, to, ", ".join(parked))
    return parked


def drop_all_streams(why: str) -> list:
    """Drop every stream (the next run of each starts over, saying why); their names."""
    with _LOCK:
        dropped = [f"{reg.kind}:{sid}" for reg, sid, _ in _by_age()]
        for reg, sid, _ in _by_age():
            reg._drop(sid, why)
    if dropped:
        log.warning("StreamVACE: %s; dropped every stream: %s", why, ", ".join(dropped))
    return dropped


def free_streams(stream_id: str = "") -> list:
    """Free one stream id in every registry (or all streams when empty); returns what was freed."""
    freed = []
    with _LOCK:
        for kind, reg in _REGISTRIES.items():
            if stream_id:
                reg._dropped.pop(stream_id, None)  # freed on request: its next run needs no explanation
            else:
                reg._dropped.clear()
            for sid in reg.ids():
                if not stream_id or sid == stream_id:
                    reg.reset(sid)
                    freed.append(f"{kind}:{sid}")
    return freed


def stream_latents(stream_id: str, start: int, end: int):
    """Normalised latents of latent frames [start, end) of a sampler stream, or None if no longer held."""
    session = registry("wan").get(stream_id)
    return None if session is None else session.stream.clean_latents(start, end)
