"""Loaded models: one object per file and settings while anything uses it, managed by ComfyUI.

ComfyUI re-runs a loader whenever its cached output is gone (another workflow queued in between, /free,
--cache-none). While a stream (or ComfyUI's cache) still holds the model, the loader hands back that same
object, so the stream goes on and ComfyUI never holds two copies; once nothing holds it, it is freed.
Every model is wrapped in a ComfyUI ModelPatcher (nodes/host.py): ComfyUI offloads it when another
workflow needs the memory, and `use` loads it back onto the GPU before a node runs it. Streams keep their
state on the device meanwhile (the registry's budget and ComfyUI's free/unload decide about that), so a
stream continues exactly where it was once its model is back.
"""

import os
import threading
import weakref

from ..models.memory import modules_of
from . import host

_MODELS = weakref.WeakValueDictionary()  # key -> model, for as long as something else holds the model
_LOCK = threading.Lock()


def file_key(*paths) -> tuple:
    """(path, size, mtime) of each existing path: changes when a file is replaced."""
    return tuple((p, os.path.getsize(p), os.stat(p).st_mtime_ns) for p in paths if p and os.path.exists(p))


def _device_of(modules: list):
    for module in modules:
        for tensor in module.parameters():
            return tensor.device
    return host.torch_device()


def cached(key: tuple, factory):
    """The model loaded for `key`, loaded by factory() when no live object has it, tagged with the key
    (`streamvace_key`: streams follow the weights, not the Python object) and handed to ComfyUI's model
    management."""
    with _LOCK:
        model = _MODELS.get(key)
    if model is not None:
        return model
    model = factory()  # outside the lock: loading takes long, and a failed load stores nothing
    model.streamvace_key = key
    modules = modules_of(model)
    model.streamvace_patcher = host.manage_model(modules, _device_of(modules))
    with _LOCK:
        return _MODELS.setdefault(key, model)


def use(*models) -> None:
    """Load these models onto the compute device for this run (after ComfyUI may have offloaded them)."""
    host.load_models([getattr(model, "streamvace_patcher", None) for model in models if model is not None])


def loaded() -> list:
    """The models alive now."""
    with _LOCK:
        return list(_MODELS.values())


def clear() -> None:
    """Offload every model to ComfyUI's offload device and forget them (a later load reads the file again)."""
    with _LOCK:
        models = list(_MODELS.values())
        _MODELS.clear()
    host.offload_models([getattr(model, "streamvace_patcher", None) for model in models])
