"""Loaded models memoised by what they were loaded from.

ComfyUI re-runs a loader whenever its cached output is gone (another workflow queued in between, /free,
--cache-none). Handing back the same model object then keeps every stream built on it going instead of
starting it over. The last few models stay loaded; a changed file (size or modification time) loads anew.
"""

import os
import threading
from collections import OrderedDict

KEEP = 4
_MODELS = OrderedDict()
_LOCK = threading.Lock()


def file_key(*paths) -> tuple:
    """(path, size, mtime) of each existing path: changes when a file is replaced."""
    return tuple((p, os.path.getsize(p), os.stat(p).st_mtime_ns) for p in paths if p and os.path.exists(p))


def cached(key: tuple, factory):
    """The model loaded for `key`, loading it with factory() the first time (least recently used dropped)."""
    with _LOCK:
        if key in _MODELS:
            _MODELS.move_to_end(key)
            return _MODELS[key]
    model = factory()  # outside the lock: loading takes long, and a failed load stores nothing
    with _LOCK:
        _MODELS[key] = model
        while len(_MODELS) > KEEP:
            _MODELS.popitem(last=False)
    return model


def clear() -> None:
    """Forget every memoised model."""
    with _LOCK:
        _MODELS.clear()
