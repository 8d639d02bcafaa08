"""DreamLite stylize nodes: load DreamLite-mobile (+ Temporal-LLLite), stylize a frame stream, measure flicker."""

import logging
import os

import torch

from ..models.dreamlite.loader import LICENCE_NOTE, dreamlite_folder_kind, load_dreamlite
from ..models.dreamlite.pipeline import StylizeModel, StylizeOptions, check_frames, resize_frames
from ..models.dreamlite.flicker_metrics import flicker_report
from ..models.dreamlite.temporal_lllite import HOOK_SUBSETS, TemporalLLLite, adapter_file_kind
from . import host, streams
from .model_cache import cached, file_key, use
from .model_lists import UNINSPECTED_NOTE, files_of_kind

MODEL_FOLDER = "diffusers"  # ComfyUI's folder for diffusers-format pipelines
ADAPTER_FOLDER = "controlnet"  # LLLite adapters live with the ControlNets
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}  # the pack's one dtype vocabulary (nodes/types.py)
LEGACY_DTYPES = {"bfloat16": "bf16", "float32": "fp32"}  # what saved workflows of earlier versions hold
COMPILE_MODES = ["off", "reduce-overhead", "default", "max-autotune"]
CATEGORY = "StreamVACE/DreamLite"


def _pipeline_folders() -> list:
    """DreamLite-mobile pipeline folders of models/diffusers (other diffusers pipelines are not listed)."""
    folders = [name for name in host.model_dirs(MODEL_FOLDER)
               if os.path.isfile(os.path.join(host.model_path(MODEL_FOLDER, name), "model_index.json"))]
    return files_of_kind(MODEL_FOLDER, ("dreamlite_mobile",), dreamlite_folder_kind, folders)


class StreamVACEDreamLiteLoader:
    """Load DreamLite-mobile and, optionally, a Temporal-LLLite adapter into a DREAMLITE model."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("DREAMLITE",)
    RETURN_NAMES = ("dreamlite",)
    OUTPUT_TOOLTIPS = ("The loaded DreamLite model (+ adapter), for DreamLite Stylize Stream.",)
    FUNCTION = "load"
    DESCRIPTION = (
        "Loads DreamLite-mobile (0.39B edit U-Net, Qwen3-VL-2B text encoder, TAESDXL) from its diffusers folder "
        "in models/diffusers (carlofkl/DreamLite-mobile, revision 'diffusers'), plus an optional Temporal-LLLite "
        "adapter from models/controlnet (e.g. temporal_lllite_step001440.safetensors). " + LICENCE_NOTE
        + " The Temporal-LLLite v3 adapter is CC BY-NC 4.0 as well.")

    @classmethod
    def INPUT_TYPES(cls):
        """The model folder, the adapter file, the hook subset, the precision and torch.compile."""
        return {"required": {
            "model": (_pipeline_folders(), {"tooltip": "DreamLite-mobile diffusers folder (with model_index.json) "
                                                       "inside models/diffusers; other pipelines are not listed."}),
            "lllite": (["none"] + files_of_kind(ADAPTER_FOLDER, ("lllite",), adapter_file_kind), {
                "tooltip": "Temporal-LLLite adapter for flicker-free video (models/controlnet); 'none' stylizes "
                           "each frame on its own. ControlNets and other adapters are not listed. "
                           + UNINSPECTED_NOTE}),
            "hook_blocks": (list(HOOK_SUBSETS), {
                "default": "down_blocks",
                "tooltip": "Which U-Net blocks get adapter hooks: down_blocks (38 hooks) is the paper's default, "
                           "sharper and faster than all 108; hooks outside the subset are ignored at load."}),
            "dtype": (list(DTYPES), {"default": "bf16", "tooltip": "bf16 on GPUs; fp16 is not offered "
                                                                        "because Qwen3-VL outputs overflow it."}),
            "compile": (COMPILE_MODES, {
                "default": "off",
                "tooltip": "torch.compile the U-Net + adapter as one graph (reduce-overhead adds CUDA graphs). "
                           "The first batch compiles (slow); later batches are faster."}),
        }, "optional": {
            "compile_text": (["off", "default"], {
                "default": "off",
                "tooltip": "torch.compile the Qwen3-VL text encoder's decoder layers: the text refreshes no longer "
                           "stall a batch (on an H100: p95 latency 2.4x -> 2.0x p50, +8 % fps)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, dtype):
        """Accept the dtype names of earlier versions (bfloat16, float32), so saved workflows still load."""
        if LEGACY_DTYPES.get(dtype, dtype) not in DTYPES:
            return f"dtype must be one of {list(DTYPES)}, got {dtype!r}"
        return True

    def load(self, model, lllite, hook_blocks, dtype, compile, compile_text="off"):
        """Load the pipeline parts onto ComfyUI's device and attach the adapter (memoised: streams go on)."""
        dtype = LEGACY_DTYPES.get(dtype, dtype)
        progress = host.Progress(1)
        folder = host.model_path(MODEL_FOLDER, model)
        adapter_path = None if lllite == "none" else host.model_path(ADAPTER_FOLDER, lllite)
        device = host.torch_device()

        def load():
            models = load_dreamlite(folder, device, DTYPES[dtype])
            adapter = report = None
            if adapter_path is not None:
                adapter, report = TemporalLLLite.from_file(models.unet, adapter_path, hook_blocks)
                logging.getLogger(__name__).info("%s: %s", lllite, report.summary())
            return StylizeModel(models, adapter, report, None if compile == "off" else compile,
                                None if compile_text == "off" else compile_text)

        key = ("dreamlite", file_key(folder, adapter_path), hook_blocks, dtype, compile, compile_text, str(device))
        model = cached(key, load)
        progress.update(1)
        return (model,)


class StreamVACEDreamLiteStylize:
    """Restyle a stream of frames with DreamLite-mobile; queued runs continue the same stream by its id."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The stylized frames, at width x height.",)
    FUNCTION = "stylize"
    DESCRIPTION = (
        "Video-rate stylization (DreamLite edit mode, 1-4 steps). Frames are processed in batches; the "
        "Temporal-LLLite adapter conditions each frame on the previous output warped by optical flow. The "
        "previous output, cached text embedding and flow inputs carry over between queue runs with the same "
        "stream_id, so queuing the next frames continues one stylized stream. Changing size, batch size or the "
        "model restarts it (as does reset); a new seed only changes the noise from the next frame on. "
        + LICENCE_NOTE)

    @classmethod
    def INPUT_TYPES(cls):
        """The model, the frames, the instruction, the stream id and every throughput knob."""
        return {"required": {
            "dreamlite": ("DREAMLITE", {"tooltip": "From the DreamLite loader."}),
            "images": ("IMAGE", {"tooltip": "Frames of the stream, in order."}),
            "prompt": ("STRING", {"multiline": True, "default": "an oil painting style",
                                  "tooltip": "The style instruction; changing it refreshes the text embedding."}),
            "stream_id": ("STRING", {"default": "main", "tooltip": "Runs with the same id continue one stream."}),
            "reset": ("BOOLEAN", {"default": False, "tooltip": "Start the stream afresh (no previous frame)."}),
            "width": ("INT", {"default": 512, "min": 256, "max": 2048, "step": 32,
                              "tooltip": "Frames are resized to this size (multiple of 32); 512 is the trained size."}),
            "height": ("INT", {"default": 512, "min": 256, "max": 2048, "step": 32,
                               "tooltip": "Frames are resized to this size (multiple of 32); 512 is the trained size."}),
            "steps": ("INT", {"default": 1, "min": 1, "max": 4,
                              "tooltip": "Denoising steps: 4 is the distilled recipe, 1 the video-rate "
                                         "operating point."}),
            "batch_size": ("INT", {"default": 8, "min": 1, "max": 64,
                                   "tooltip": "Frames per batch; a batch's frames all follow the previous batch's "
                                              "last output. The last batch of a run is padded."}),
            "te_refresh_every": ("INT", {"default": 1, "min": 1, "max": 4096,
                                         "tooltip": "Run the Qwen3-VL text encoder every N batches and reuse it in "
                                                    "between (an approximation for slowly changing scenes)."}),
            "te_batch_one": ("BOOLEAN", {"default": False,
                                         "tooltip": "Encode only the batch's first frame and share it "
                                                    "(approximation)."}),
            "cond_refresh_every": ("INT", {"default": 8, "min": 1, "max": 4096,
                                           "tooltip": "Rebuild the adapter's condition every N batches (the paper's "
                                                      "champion uses 8; 1 is exact)."}),
            "lllite_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                          "tooltip": "Adapter multiplier; 0 is the bare model."}),
            "fixed_noise": ("BOOLEAN", {"default": False, "tooltip": "Start every frame from the same noise."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                             "tooltip": "Noise seed of the next frames. A new seed continues the stream with "
                                        "fresh noise (it never restarts it), so 'randomize after generate' is "
                                        "fine; reset restarts."}),
        }}

    @classmethod
    def IS_CHANGED(cls, **_):
        """Always re-run: each queue run continues the stream."""
        return float("nan")

    def stylize(self, dreamlite, images, prompt, stream_id, reset, width, height, steps, batch_size,
                te_refresh_every, te_batch_one, cond_refresh_every, lllite_strength, fixed_noise, seed):
        """Stylize the frames and continue the stream named `stream_id`."""
        use(dreamlite)
        options = StylizeOptions(prompt, steps, te_refresh_every, te_batch_one, cond_refresh_every,
                                 lllite_strength, fixed_noise)
        options.validate()
        check_frames(images, alpha=True)
        stylizer = dreamlite.stylizer(width, height, batch_size)  # checks the sizes
        registry = streams.registry("dreamlite")  # only now, every check passed, may the stream change
        if reset:
            registry.reset(stream_id)
        # the model object itself (not its id) in the signature: a reloaded model always starts a new stream.
        # The seed is not in it: the frontend randomises it after every run, and that must not restart the video
        stream = registry.get_or_create(stream_id, (dreamlite, width, height, batch_size),
                                        lambda: stylizer.new_stream(seed))
        frames = resize_frames(images[..., :3], width, height)
        progress = host.Progress(len(frames))
        return (stylizer.stylize(frames, stream, options, on_batch=progress.update, seed=seed),)


class StreamVACEFlickerMetric:
    """Warping error of stylized frames, with the Sobel and high-frequency probes that expose blur."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("FLOAT", "FLOAT", "FLOAT", "STRING")
    RETURN_NAMES = ("warping_error", "sobel", "hf_energy", "report")
    OUTPUT_TOOLTIPS = ("Mean warping error (lower is steadier).", "Mean Sobel gradient magnitude (sharpness).",
                       "High-frequency FFT energy (sharpness).", "All three in one line.")
    FUNCTION = "measure"
    DESCRIPTION = (
        "Temporal flicker of a stylized clip: warping error on Farnebäck flow of the source frames (lower is "
        "steadier), reported with mean Sobel gradient and high-frequency FFT energy, because blur alone lowers "
        "warping error; a lower error with lower sharpness is smoothing, not consistency.")

    @classmethod
    def INPUT_TYPES(cls):
        """The stylized frames and the source frames they came from."""
        return {"required": {
            "stylized": ("IMAGE", {"tooltip": "The stylized frames."}),
            "source": ("IMAGE", {"tooltip": "The input frames, same count; resized to the stylized size."}),
        }}

    def measure(self, stylized, source):
        """Compute the metrics; the report string sums them up in one line."""
        source = resize_frames(source[..., :3], stylized.shape[2], stylized.shape[1])
        report = flicker_report(stylized[..., :3].float().cpu().numpy(), source.numpy())
        return (report.warping_error, report.sobel, report.hf_energy, report.summary())


NODE_CLASS_MAPPINGS = {
    "StreamVACEDreamLiteLoader": StreamVACEDreamLiteLoader,
    "StreamVACEDreamLiteStylize": StreamVACEDreamLiteStylize,
    "StreamVACEFlickerMetric": StreamVACEFlickerMetric,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "StreamVACEDreamLiteLoader": "DreamLite Loader (StreamVACE)",
    "StreamVACEDreamLiteStylize": "DreamLite Stylize Stream (StreamVACE)",
    "StreamVACEFlickerMetric": "Flicker Metric (StreamVACE)",
}
