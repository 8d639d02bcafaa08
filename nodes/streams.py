"""The stream registry: state that lives across ComfyUI queue runs, keyed by a stream id.

A ComfyUI queue run executes the graph once. A streaming node keeps its state (KV cache, VAE caches,
previous frames, RNG cursor, ...) here, never in class attributes, so that N queued runs continue one
stream. Entries are recreated when their signature (model, resolution, seed, ...) changes.
"""

import gc
import threading
from typing import Any, Callable, Hashable

import torch


class StreamRegistry:
    """Named store of per-stream state objects for one kind of stream (e.g. 'wan', 'depth')."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries = {}
        self._lock = threading.Lock()

    def get(self, stream_id: str):
        """The state of a stream, or None."""
        entry = self._entries.get(stream_id)
        return None if entry is None else entry[1]

    def replaced(self, stream_id: str, signature: Hashable):
        """The state that get_or_create(stream_id, signature, ...) would replace, or None."""
        entry = self._entries.get(stream_id)
        return None if entry is None or entry[0] == signature else entry[1]

    def get_or_create(self, stream_id: str, signature: Hashable, factory: Callable[[], Any]):
        """The stream's state; a fresh one from `factory` if absent or if its signature changed.

        The old state is replaced only once `factory()` succeeded: a run that fails (bad settings, a failed
        allocation) never loses the stream it names. Validate settings before calling this, so the common
        failures cost nothing; only when the new state does not fit beside the old one (out of memory) is
        the old one freed first and the creation tried once more.
        """
        if not stream_id:
            raise ValueError(f"{self.kind} stream id must not be empty: name the stream (e.g. 'main').")
        with self._lock:
            entry = self._entries.get(stream_id)
            if entry is not None and entry[0] == signature:
                return entry[1]
            try:
                state = factory()
            except (MemoryError, torch.OutOfMemoryError):
                if entry is None:
                    raise
                self._entries.pop(stream_id, None)  # the new state needs the old one's memory
                entry = None
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                state = factory()
            self._entries[stream_id] = (signature, state)
            return state

    def run(self, stream_id: str, signature: Hashable, factory: Callable[[], Any], call: Callable[[Any], Any],
            fresh: bool = False):
        """call(state) on the stream's state. A new state (`fresh`, absent, or a changed signature) replaces the
        old one only once call(state) succeeded: a run with a reset or new settings that fails keeps the stream."""
        if not stream_id:
            raise ValueError(f"{self.kind} stream id must not be empty: name the stream (e.g. 'main').")
        entry = self._entries.get(stream_id)
        if not fresh and entry is not None and entry[0] == signature:
            return call(entry[1])  # a state continued in place keeps itself unchanged when a call fails
        state = factory()
        result = call(state)
        with self._lock:
            self._entries[stream_id] = (signature, state)
        return result

    def reset(self, stream_id: str) -> bool:
        """Forget a stream; True if it existed."""
        with self._lock:
            return self._entries.pop(stream_id, None) is not None

    def clear(self) -> None:
        """Forget every stream of this kind."""
        with self._lock:
            self._entries.clear()

    def ids(self) -> list:
        """The ids of the live streams."""
        return sorted(self._entries)


_REGISTRIES = {}


def registry(kind: str) -> StreamRegistry:
    """The process-wide registry for one kind of stream."""
    if kind not in _REGISTRIES:
        _REGISTRIES[kind] = StreamRegistry(kind)
    return _REGISTRIES[kind]


def free_streams(stream_id: str = "") -> list:
    """Free one stream id in every registry (or all streams when empty); returns what was freed."""
    freed = []
    for kind, reg in _REGISTRIES.items():
        for sid in reg.ids():
            if not stream_id or sid == stream_id:
                reg.reset(sid)
                freed.append(f"{kind}:{sid}")
    return freed


def stream_latents(stream_id: str, start: int, end: int):
    """Normalised latents of latent frames [start, end) of a sampler stream, or None if no longer held."""
    session = registry("wan").get(stream_id)
    return None if session is None else session.stream.clean_latents(start, end)
