"""Shared plumbing for the annotator nodes: model folders, model choices, a small model cache, stream inputs."""

import os

import torch

from ..annotators.weights import annotator_model_kind
from . import host
from .model_cache import cached, file_key, use
from .model_lists import files_of_kind
from .streams import registry
from .types import STREAM_INPUTS  # noqa: F401 (re-exported for the annotator node modules)

# models/<folder> in ComfyUI (outside it: $STREAMVACE_MODELS_DIR/<folder>)
DEPTH_FOLDER = "depthanything"
POSE_FOLDER = "vitpose"
DETECTION_FOLDER = "detection"
SAM2_FOLDER = "sam2"
SCRIBBLE_FOLDER = "scribble"
RAFT_FOLDER = "raft"
for _folder in (DEPTH_FOLDER, POSE_FOLDER, DETECTION_FOLDER, SAM2_FOLDER, SCRIBBLE_FOLDER, RAFT_FOLDER):
    host.register_model_folder(_folder)

# said by every annotator model input's tooltip
FILTER_NOTE = (" Files and folders that look like other models are not listed; .pth/.pt files are listed everywhere "
               "(their contents are only known once loaded).")


class StreamingNode:
    """Base of the nodes that continue a stream (state in the stream registry): they run on every queue."""

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        """NaN never equals itself, so ComfyUI re-runs the node on every queue instead of caching it."""
        return float("nan")


def model_choices(folder: str, kinds: tuple, folders: bool = True, files: bool = False) -> list:
    """Names for a model combo: Hugging Face sub-folders and/or weight files of models/<folder> that look like one
    of `kinds` (annotators.weights.annotator_model_kind; pickles are listed, only loading tells), empty when none,
    as ComfyUI's own loaders (the input's tooltip names the folder and the files to put there)."""
    directories = host.model_dirs(folder) if folders else []
    names = directories + [name for name in (host.model_files(folder) if files else [])  # not a folder's own files
                           if not any(name.startswith(directory + os.sep) for directory in directories)]
    return sorted(set(files_of_kind(folder, kinds, annotator_model_kind, names)))


def model_path(folder: str, name: str, expected: str) -> str:
    """Full path of a chosen model, or a clear error saying what to put where."""
    if not name:
        where = ", ".join(host.model_folder_paths(folder))
        raise FileNotFoundError(f"No model in the '{folder}' model folder ({where}). Put {expected} there, "
                                "refresh the node list (press R) and pick it.")
    return host.model_path(folder, name)


def cached_model(loader, path: str):
    """loader(path, device, dtype) (bf16 on CUDA, float32 on CPU), memoised while in use and loaded onto the
    compute device for this run (ComfyUI may have offloaded it since the last one)."""
    device = host.torch_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    key = (loader.__module__, loader.__name__, path, file_key(path), str(device), dtype)
    model = cached(key, lambda: loader(path, device=device, dtype=dtype))
    use(model)
    return model


def run_stream(kind: str, stream_id: str, reset: bool, signature, factory, call):
    """call(annotator) on the stream's annotator; a fresh one (reset, or changed settings) replaces the old one
    only when the call succeeds, so a failed run never loses the stream."""
    return registry(kind).run(stream_id, signature, factory, call, fresh=reset)


def on_device(video: torch.Tensor) -> torch.Tensor:
    """Move an engine tensor to the compute device."""
    host.check_interrupted()
    return video.to(host.torch_device(), non_blocking=True)
