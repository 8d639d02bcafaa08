"""Model combos that only offer files of the right kind (base DiTs, VACE modules, LoRAs), read from headers.

A .safetensors header names every tensor, so a file's kind costs one small read (memoised per file version).
Pickled .pth/.pt files cannot be inspected without loading them, so they are offered in every list (LongLive
ships its base model and LoRA that way); the loader then says what a wrong pick looks like.
"""

import threading

from ..models.wan.checkpoint import checkpoint_kind
from . import host
from .model_cache import file_key

DIT_KINDS = ("dit", "vace_dit")
VACE_KINDS = ("vace", "vace_dit")
LORA_KINDS = ("lora",)
UNINSPECTED_NOTE = ".pth/.pt files are listed everywhere: their contents are only known once loaded."
_KINDS = {}
_LOCK = threading.Lock()


def file_kind(path: str) -> str:
    """checkpoint_kind(path)[0], memoised by (path, size, mtime)."""
    key = file_key(path) or (path,)
    with _LOCK:
        if key in _KINDS:
            return _KINDS[key]
    kind = checkpoint_kind(path)[0]
    with _LOCK:
        _KINDS[key] = kind
    return kind


def wan_files(folder: str, kinds) -> list:
    """Names in a model folder whose kind is one of `kinds`, plus the ones that cannot be inspected cheaply."""
    names = []
    for name in host.model_files(folder):
        try:
            kind = file_kind(host.model_path(folder, name))
        except (OSError, ValueError):  # vanished between listing and reading: the loader reports it if picked
            kind = "unknown"
        if kind in kinds or kind == "unknown":
            names.append(name)
    return names
