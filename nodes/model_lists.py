"""Model combos that only offer files of the right kind (base DiTs, VACE modules, LoRAs, VAEs, annotator models,
DreamLite pipelines and adapters), read from headers.

A .safetensors header names every tensor, so a file's kind costs one small read (memoised per file version); a
Hugging Face folder is read by its config.json / model_index.json.
Pickled .pth/.pt files cannot be inspected without loading them, so they are offered in every list (LongLive
ships its base model and LoRA that way); the loader then says what a wrong pick looks like.
"""

import os
import threading

from ..models.vae.checkpoints import vae_file_kind
from ..models.wan.checkpoint import checkpoint_kind
from . import host
from .model_cache import file_key

DIT_KINDS = ("dit", "vace_dit")
VACE_KINDS = ("vace", "vace_dit")
LORA_KINDS = ("lora",)
UNINSPECTED_NOTE = ".pth/.pt files are listed everywhere: their contents are only known once loaded."
_KINDS = {}
_LOCK = threading.Lock()


def file_kind(path: str, classify=checkpoint_kind) -> str:
    """classify(path)[0], memoised by (classifier, path, size, mtime); a folder also by its config files'."""
    configs = [os.path.join(path, name) for name in ("config.json", "model_index.json")] if os.path.isdir(path) else []
    key = (classify.__module__, classify.__name__, file_key(path, *configs) or (path,))
    with _LOCK:
        if key in _KINDS:
            return _KINDS[key]
    kind = classify(path)[0]
    with _LOCK:
        _KINDS[key] = kind
    return kind


def files_of_kind(folder: str, kinds, classify=checkpoint_kind, names=None) -> list:
    """Names in a model folder (`names`, by default its files) whose kind is one of `kinds`, plus the ones that
    cannot be inspected cheaply."""
    found = []
    for name in host.model_files(folder) if names is None else names:
        try:
            kind = file_kind(host.model_path(folder, name), classify)
        except (OSError, ValueError):  # vanished between listing and reading: the loader reports it if picked
            kind = "unknown"
        if kind in kinds or kind == "unknown":
            found.append(name)
    return found


def wan_files(folder: str, kinds) -> list:
    """Wan DiT / VACE / LoRA files of a model folder (see checkpoint_kind)."""
    return files_of_kind(folder, kinds, checkpoint_kind)


def vae_files(folder: str, kinds) -> list:
    """Wan2.1 VAE / tiny VAE files of a model folder (see vae_file_kind)."""
    return files_of_kind(folder, kinds, vae_file_kind)
