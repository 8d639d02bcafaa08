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


def input_directory():
    """ComfyUI's input folder (where LoadImage / LoadVideo look), or None outside ComfyUI."""
    folder_paths = _comfy("folder_paths")
    return folder_paths.get_input_directory() if folder_paths is not None else None


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


PREVIEW_SIZE = 512  # ComfyUI's default --preview-size
SLOW_STEP_SECONDS = 5.0  # steps slower than this are also reported in the console (the bar alone looks stuck)


def _preview_size() -> int:
    cli_args = _comfy("comfy.cli_args")
    return int(getattr(getattr(cli_args, "args", None), "preview_size", PREVIEW_SIZE) or PREVIEW_SIZE)


class Progress:
    """A progress bar shown on the node in ComfyUI; also checks for Cancel. On slow devices (steps over
    SLOW_STEP_SECONDS) each step is logged with the time left, inside and outside ComfyUI."""

    def __init__(self, total: int, what: str = "StreamVACE"):
        utils = _comfy("comfy.utils")
        self.total, self.current, self.what = max(1, int(total)), 0, what
        self._bar = utils.ProgressBar(self.total) if utils is not None and inside_comfyui() else None
        self._start = self._last = time.monotonic()

    def update(self, steps: int = 1) -> None:
        """Advance by `steps` and raise if the user interrupted."""
        check_interrupted()
        self.current = min(self.total, self.current + steps)
        if self._bar is not None:
            self._bar.update_absolute(self.current, self.total)
        now = time.monotonic()
        if now - self._last > SLOW_STEP_SECONDS * steps:
            left = (now - self._start) / self.current * max(0, self.total - self.current)
            logging.getLogger("streamvace").warning("%s: step %d of %d took %.0f s (about %.0f s left); a smaller size "
                                                    "or a GPU is faster", self.what, self.current, self.total,
                                                    now - self._last, left)
        self._last = now

    def message(self, text: str) -> None:
        """Show a line of text on the running node (servers with progress text) and log it."""
        logging.getLogger("streamvace").info("%s: %s", self.what, text)
        server = getattr(getattr(_comfy("server"), "PromptServer", None), "instance", None)
        if self._bar is None or not hasattr(server, "send_progress_text"):
            return
        context = getattr(_comfy("comfy_execution.utils"), "get_executing_context", lambda: None)()
        node = getattr(context, "node_id", None) or getattr(server, "last_node_id", None)
        if node is not None:
            server.send_progress_text(text, node, getattr(server, "client_id", None))

    @property
    def shows_previews(self) -> bool:
        """True inside ComfyUI, where previews reach the UI (outside it, skip computing them)."""
        return self._bar is not None

    def preview(self, image: torch.Tensor) -> None:
        """Show an image [H, W, 3] in [0, 1] on the node, as ComfyUI's sampler previews do (no-op outside it)."""
        if self._bar is None:
            return
        from PIL import Image  # ComfyUI always has Pillow; the engine and the tests outside ComfyUI do not need it

        pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        self._bar.update_absolute(self.current, self.total, ("JPEG", Image.fromarray(pixels), _preview_size()))


def total_memory(device=None) -> int:
    """Bytes of memory on the compute device (system RAM for the CPU)."""
    device = torch.device(device) if device is not None else torch_device()
    model_management = _comfy("comfy.model_management")
    if model_management is not None:
        return int(model_management.get_total_memory(device))
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class ManagedModules(torch.nn.Module):
    """What ComfyUI's ModelPatcher manages for one engine object: its modules as children.

    A holder of our own, because ModelPatcher sets plain attributes (device, model_loaded_weight_memory, ...)
    on the module it wraps, and transformers models have a read-only `device`.
    """

    def __init__(self, modules: list, device):
        super().__init__()
        self.parts = torch.nn.ModuleList(modules)
        self.device = device


def manage_model(modules: list, device):
    """A ComfyUI ModelPatcher over these modules (now on `device`), so ComfyUI can offload them between
    runs like its own models; None outside ComfyUI, where models simply stay where they were loaded."""
    model_management, model_patcher = _comfy("comfy.model_management"), _comfy("comfy.model_patcher")
    if model_management is None or model_patcher is None or not modules:
        return None
    device = torch.device(device)
    offload = model_management.unet_offload_device()
    patcher = model_patcher.ModelPatcher(ManagedModules(modules, device), load_device=device,
                                         offload_device=offload)
    if device != offload:  # already on the GPU: let ComfyUI count it as loaded there
        model_management.load_models_gpu([patcher], force_full_load=True)
    return patcher


def load_models(patchers: list) -> None:
    """Bring managed models onto the compute device before a node runs them (ComfyUI frees memory for them
    by offloading other models first); whole models only, as our modules do not cast weights per layer."""
    patchers = [p for p in patchers if p is not None]
    model_management = _comfy("comfy.model_management")
    if patchers and model_management is not None:
        model_management.load_models_gpu(patchers, force_full_load=True)


def offload_models(patchers: list) -> None:
    """Move managed models to ComfyUI's offload device now (they load again when next used)."""
    for patcher in patchers:
        if patcher is not None:
            patcher.detach()


def watch_memory(on_pressure, on_unload_all) -> bool:
    """Hook ComfyUI's memory management: on_pressure(device, enough) after its free_memory still left too
    little free (enough() tells when there is enough now), on_unload_all() when it unloads every model (the
    Unload models / Free buttons, POST /free). Installed once; False outside ComfyUI."""
    model_management = _comfy("comfy.model_management")
    if model_management is None:
        return False
    if getattr(model_management, "_streamvace_watched", False):
        return True
    free_memory, unload_all_models = model_management.free_memory, model_management.unload_all_models

    def watched_free_memory(memory_required, device, *args, **kwargs):
        unloaded = free_memory(memory_required, device, *args, **kwargs)
        try:
            on_pressure(device, lambda: model_management.get_free_memory(device) >= memory_required)
        except Exception:  # our streams must never break ComfyUI's own loading
            logging.getLogger(__name__).exception("StreamVACE: could not move streams off %s", device)
        return unloaded

    def watched_unload_all_models(*args, **kwargs):
        try:
            on_unload_all()
        except Exception:
            logging.getLogger(__name__).exception("StreamVACE: could not drop the streams")
        return unload_all_models(*args, **kwargs)

    # module attributes: ComfyUI calls both through the module (load_models_gpu's free_memory is a global
    # lookup in the same module, /free reaches unload_all_models as comfy.model_management.unload_all_models)
    model_management.free_memory = watched_free_memory
    model_management.unload_all_models = watched_unload_all_models
    model_management._streamvace_watched = True
    return True
