"""Loaded models memoised by what they were loaded from.

ComfyUI re-runs a loader whenever its cached output is gone (another workflow queued in between, /free,
--cache-none). Handing back the same model object then keeps every stream built on it going instead of
starting it over. The last few models stay loaded; a changed file (size or modification time) loads anew.
"""

import os
import threading
from collections import OrderedDict

KEEP = 2  # of each kind: models sit on the GPU outside ComfyUI's memory management, so keep few
_MODELS = OrderedDict()
_LOCK = threading.Lock()


def file_key(*paths) -> tuple:
    """(path, size, mtime) of each existing path: changes when a file is replaced."""
    return tuple((p, os.path.getsize(p), os.stat(p).st_mtime_ns) for p in paths if p and os.path.exists(p))


def cached(key: tuple, factory):
    """The model loaded for `key` (its first item names the kind), loaded by factory() the first time; the
    least recently used models of a kind beyond KEEP are dropped."""
    with _LOCK:
        if key in _MODELS:
            _MODELS.move_to_end(key)
            return _MODELS[key]
    model = factory()  # outside the lock: loading takes long, and a failed load stores nothing
    with _LOCK:
        _MODELS[key] = model
        same_kind = [k for k in _MODELS if k[0] == key[0]]  # keep KEEP of each kind: a VAE never evicts a DiT
        for old in same_kind[:-KEEP]:
            del _MODELS[old]
    return model


def clear() -> None:
    """Forget every memoised model."""
    with _LOCK:
        _MODELS.clear()
