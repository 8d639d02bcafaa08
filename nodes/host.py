"""The one door to ComfyUI: model folders, device, progress and interruption, imported lazily.

Inside ComfyUI these call folder_paths / comfy.model_management / comfy.utils. Outside it (tests,
scripts, the CLI) they fall back to a plain models directory (STREAMVACE_MODELS_DIR, default
./models, with ComfyUI's folder names under it), the best available torch device, and no progress UI.
"""

import importlib
import logging
import os
import time

import torch

MODEL_EXTENSIONS = {".safetensors", ".pth", ".pt", ".bin", ".ckpt"}


def _comfy(module_name):
    """Return a ComfyUI module, or None when not running inside ComfyUI."""
    try:
        return importlib.import_module(module_name)
    except ImportError:
        return None


def inside_comfyui() -> bool:
    """True when ComfyUI's folder_paths module can be imported."""
    return _comfy("folder_paths") is not None


def _fallback_root() -> str:
    return os.environ.get("STREAMVACE_MODELS_DIR", os.path.join(os.getcwd(), "models"))


def register_model_folder(folder: str, extensions=MODEL_EXTENSIONS) -> None:
    """Make models/<folder> a known model folder (no-op for folders ComfyUI already knows)."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is None or folder in folder_paths.folder_names_and_paths:
        return
    folder_paths.folder_names_and_paths[folder] = (
        [os.path.join(folder_paths.models_dir, folder)], set(extensions))


def model_folder_paths(folder: str) -> list:
    """Directories searched for models of this kind (e.g. 'diffusion_models', 'vae')."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        register_model_folder(folder)
        return list(folder_paths.get_folder_paths(folder))
    return [os.path.join(_fallback_root(), folder)]


def model_files(folder: str) -> list:
    """Model files (relative names) in a model folder, for a combo input."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        register_model_folder(folder)
        return list(folder_paths.get_filename_list(folder))
    names = []
    for root in model_folder_paths(folder):
        for directory, _, files in os.walk(root, followlinks=True):
            for name in files:
                if os.path.splitext(name)[1].lower() in MODEL_EXTENSIONS:
                    names.append(os.path.relpath(os.path.join(directory, name), root))
    return sorted(names)


def model_dirs(folder: str) -> list:
    """Sub-folders holding a Hugging Face model (a config.json inside), for a combo input."""
    names = []
    for root in model_folder_paths(folder):
        for directory, _, files in os.walk(root, followlinks=True):
            if "config.json" in files or "model_index.json" in files:
                names.append(os.path.relpath(directory, root))
    return sorted(set(names))


def model_path(folder: str, name: str) -> str:
    """Full path of a file or sub-folder chosen from a model folder; a clear error if it is gone."""
    for root in model_folder_paths(folder):
        candidate = os.path.join(root, name)
        if os.path.exists(candidate):
            return candidate
    searched = ", ".join(model_folder_paths(folder))
    raise FileNotFoundError(
        f"'{name}' was not found in the '{folder}' model folder (searched: {searched}). "
        f"Put the file there and refresh the node list.")


def output_directory() -> str:
    """ComfyUI's output folder (./output outside ComfyUI)."""
    folder_paths = _comfy("folder_paths")
    return folder_paths.get_output_directory() if folder_paths is not None else os.path.join(os.getcwd(), "output")


def torch_device() -> torch.device:
    """The device ComfyUI runs models on (or CUDA / CPU outside ComfyUI)."""
    model_management = _comfy("comfy.model_management")
    if model_management is not None:
        return model_management.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_interrupted() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel (no-op outside ComfyUI)."""
    model_management = _comfy("comfy.model_management")
    if model_management is not None:
        model_management.throw_exception_if_processing_interrupted()


SLOW_STEP_SECONDS = 5.0  # steps slower than this are also reported in the console (the bar alone looks stuck)


class Progress:
    """A progress bar shown on the node in ComfyUI; also checks for Cancel. On slow devices (steps over
    SLOW_STEP_SECONDS) each step is logged with the time left, inside and outside ComfyUI."""

    def __init__(self, total: int, what: str = "StreamVACE"):
        utils = _comfy("comfy.utils")
        self._bar = utils.ProgressBar(total) if utils is not None and inside_comfyui() else None
        self.total, self.done, self.what = total, 0, what
        self._start = self._last = time.monotonic()

    def update(self, steps: int = 1) -> None:
        """Advance by `steps` and raise if the user interrupted."""
        check_interrupted()
        self.done += steps
        if self._bar is not None:
            self._bar.update(steps)
        now = time.monotonic()
        if now - self._last > SLOW_STEP_SECONDS * steps:
            left = (now - self._start) / self.done * max(0, self.total - self.done)
            logging.getLogger("streamvace").warning("%s: step %d of %d took %.0f s (about %.0f s left); a smaller size "
                                                    "or a GPU is faster", self.what, self.done, self.total,
                                                    now - self._last, left)
        self._last = now
