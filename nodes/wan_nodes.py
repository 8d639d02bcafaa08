"""Nodes for the streaming Wan2.1 + VACE generator: model and LoRA loading, VACE controls, the stream sampler.

The sampler keeps its stream (KV cache, prompt cache, VACE encoder streams) in the "wan" stream registry,
keyed by stream_id: queue the graph N times and it generates N consecutive pieces of one video.
"""

import dataclasses

import torch

from ..models.wan import attention as attention_backends
from ..models.wan.kv_cache import cache_policy as make_cache_policy
from ..models.vae.latent_format import latents_to_comfy
from ..models.vae.latent_preview import chunk_preview
from ..models.wan.sampler import parse_steps
from ..models.wan.stream import StreamConfig
from ..models.wan.stream_session import TIMINGS, Control, StreamSession, check_run
from ..models.wan.vace_context import pixel_frame_start, prefill_chunks
from ..models.wan.checkpoint import load_wan_model
from ..models.wan.fast_path import compile_blocks, uncompile_blocks
from ..models.wan.fp8 import quantize_blocks_fp8
from . import host
from .model_cache import cached, file_key, use
from .model_lists import DIT_KINDS, LORA_KINDS, UNINSPECTED_NOTE, VACE_KINDS, wan_files
from .convert import conditioning_to_embedding, image_to_video, mask_to_video
from .streams import registry
from .types import DTYPES, PROMPTS_TYPE, VAE_TYPE

MODEL_TYPE, LORA_TYPE, CONTROL_TYPE = "STREAMVACE_MODEL", "STREAMVACE_LORA", "STREAMVACE_CONTROL"
POLICIES = ("longlive", "motionstream", "full", "infinity", "deep_forcing")
POLICY_TOOLTIP = (
    "What the model remembers of the video so far. "
    "longlive: the first 3 frames + the last 6 (LongLive's training setup). "
    "motionstream: the first chunk + the last chunk (fastest). "
    "full: everything (Self-Forcing; stops at 21 latent frames, about 5 s). "
    "infinity: like longlive, but frames are numbered inside the memory instead of from the start, so "
    "an endless stream never runs past what the model was trained on (LongLive-infinity; LongLive weights). "
    "deep_forcing: a deep memory of the first 10 frames kept in step with the present, plus the details "
    "the latest frames look at most (their sizes: deep_sink_frames, deep_top_frames; Deep Forcing; "
    "training-free, for Self-Forcing weights; long videos that keep their look and motion). "
    "Every policy costs the same per chunk however long the video gets.")


DEEP_SINK_TOOLTIP = (
    "Only for the deep_forcing policy: how many of the video's first latent frames (4 video frames each) the "
    "model never forgets, kept in step with the present. More holds the look of the opening longer; fewer lets "
    "the video move on more freely. Deep Forcing uses 10. Changing it restarts the stream.")
DEEP_TOP_TOOLTIP = (
    "Only for the deep_forcing policy: how much of the older video the memory keeps besides the first frames and "
    "the latest 4, in latent frames' worth of the details the newest frames look at most (the top C). Deep "
    "Forcing uses 2. First frames + 4 + this must fit the 21-frame memory. Changing it restarts the stream.")


def sampler_policy(name: str, deep_sink_frames: int = 10, deep_top_frames: int = 2):
    """The cache policy the sampler's inputs choose (the deep_* inputs apply to deep_forcing only)."""
    if name == "deep_forcing":
        return make_cache_policy(name, sink_frames=deep_sink_frames, top_frames=deep_top_frames)
    return make_cache_policy(name)


_COMPILED_SIZES = set()  # (model config, width, height, with control) the compiled blocks have run

class StreamVACEModelLoader:
    """Load a causal Wan2.1 DiT (LongLive, Self-Forcing, ...), optionally with a VACE module and LoRAs."""

    DESCRIPTION = ("Loads a Wan2.1 DiT for streaming from models/diffusion_models: Wan-AI, Comfy-Org repackaged, "
                   "Self-Forcing / LongLive checkpoints (.pt, generator_ema preferred), diffusers folders; fp32/fp16/"
                   "bf16/fp8 files. Add a VACE module file (e.g. Wan2_1-VACE_module_1_3B_bf16) for control, and LoRAs "
                   "(e.g. LongLive's lora.pt) which are merged at load.")
    CATEGORY = "StreamVACE/loaders"
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The streaming Wan2.1 model, for the Stream Sampler.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        """Model file, optional VACE module, precision, attention backend, optional LoRAs."""
        return {"required": {
            "model_name": (wan_files("diffusion_models", DIT_KINDS), {"tooltip": "A causal Wan2.1 checkpoint (e.g. "
                           "longlive_base.pt, self_forcing_dmd.pt) from models/diffusion_models; files that look like "
                           "VACE modules, LoRAs or other models are not listed. " + UNINSPECTED_NOTE}),
            "vace_module": (["none"] + wan_files("diffusion_models", VACE_KINDS), {"tooltip": "A VACE module file "
                            "(e.g. Wan2_1-VACE_module_1_3B_bf16); 'none' if the model has VACE or you need no "
                            "control. Only files with VACE blocks are listed. " + UNINSPECTED_NOTE}),
            "dtype": (list(DTYPES), {"default": "bf16", "tooltip": "Compute precision: bf16 on recent GPUs, fp16 "
                      "on older ones, fp32 on the CPU. fp8 files are dequantised to it."}),
            "attention": (list(attention_backends.BACKENDS), {"default": "sdpa", "tooltip": "Attention kernel of this "
                                   "model. sdpa: PyTorch picks; sdpa_cudnn / sdpa_flash / sdpa_efficient force one "
                                   "(benchmarks/RESULTS.md has their speed on H100); flash_attn / flash_attn_3 "
                                   "(FlashAttention-3, Hopper) / sageattention must be installed (bf16/fp16 only). On an H100 sdpa (cuDNN) is the fastest measured: SageAttention "
                                   "1.0.6 took 1.6x its time, and Daydream Scope disables SageAttention on Hopper "
                                   "after seeing static in the output."}),
        }, "optional": {
            "lora": (LORA_TYPE, {"tooltip": "LoRAs to merge, from 'StreamVACE LoRA'."}),
            "compile": ("BOOLEAN", {"default": True, "tooltip": "CUDA only: fuse each block's elementwise work with "
                                    "torch.compile and replay whole steps from CUDA graphs. About 1.5-2x faster per "
                                    "chunk; the first chunks of the first stream of a size take a minute longer "
                                    "while it compiles (later streams of that size reuse it)."}),
            "fp8": ("BOOLEAN", {"default": False, "tooltip": "Store the DiT blocks' Linear weights in FP8 (e4m3, one "
                                "scale per row) and run them on FP8 tensor cores (H100/Ada): the block weights take half the "
                                "memory, but a chunk is only ~3 % faster on an H100 (attention, which stays bf16, is half "
                                "of it) and outputs differ from bf16 by ~0.8 % (benchmarks/RESULTS.md)."}),
        }}

    def load(self, model_name, vace_module, dtype, attention, lora=None, compile=True, fp8=False):
        """Read and build the model on ComfyUI's device."""
        attention_backends.check_backend(attention)
        path = host.model_path("diffusion_models", model_name)
        vace_path = None if vace_module == "none" else host.model_path("diffusion_models", vace_module)
        loras, device = tuple(lora or ()), host.torch_device()
        key = ("wan", file_key(path, vace_path, *(p for p, _ in loras)), vace_path, loras, dtype, fp8, str(device))

        def load():
            model = load_wan_model(path, vace_path=vace_path, loras=loras, dtype=DTYPES[dtype], device=device)
            if fp8:
                quantize_blocks_fp8(model)
            return model

        progress = host.Progress(1)
        model = cached(key, load)  # tagged with the key: streams follow the weights, not the Python object
        model.set_attention_backend(attention)  # per model: another loader's choice never changes this one
        (compile_blocks if compile and device.type == "cuda" else uncompile_blocks)(model)
        progress.update(1)
        return (model,)


class StreamVACELora:
    """Pick a LoRA to merge into the model at load (chain several)."""

    DESCRIPTION = "A LoRA from models/loras (PEFT as LongLive ships it, or kohya naming) and its strength."
    CATEGORY = "StreamVACE/loaders"
    RETURN_TYPES = (LORA_TYPE,)
    RETURN_NAMES = ("lora",)
    OUTPUT_TOOLTIPS = ("The LoRA chain, for the model loader's lora input.",)
    FUNCTION = "select"

    @classmethod
    def INPUT_TYPES(cls):
        """LoRA file, strength, optional earlier LoRAs."""
        return {"required": {
            "lora_name": (wan_files("loras", LORA_KINDS), {"tooltip": "A Wan2.1 LoRA from models/loras (e.g. "
                          "LongLive's lora.pt) for the model's size; LoRAs of other models are not listed. "
                          + UNINSPECTED_NOTE}),
            "strength": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.05,
                                   "tooltip": "Multiplier of the LoRA's change (1 = as trained)."}),
        }, "optional": {"previous": (LORA_TYPE, {"tooltip": "LoRAs chained before this one."})}}

    def select(self, lora_name, strength, previous=None):
        """Append this LoRA to the chain."""
        return (list(previous or []) + [(host.model_path("loras", lora_name), strength)],)


class StreamVACEControl:
    """One VACE control: a control video (depth, pose, scribble, ...), masks, references, first/last frames."""

    DESCRIPTION = ("VACE control for the stream sampler. control_video: frames from an annotator (depth, pose, "
                   "scribble, gray, flow, layout) or a source video to inpaint; control_mask: white = generate; "
                   "reference_images: subject/style references kept for the whole stream; first_frame: start from "
                   "an image; last_frame: end each run on an image. Chain several controls with 'previous'.")
    CATEGORY = "StreamVACE/control"
    RETURN_TYPES = (CONTROL_TYPE,)
    RETURN_NAMES = ("control",)
    OUTPUT_TOOLTIPS = ("The control chain, for the Stream Sampler's control input.",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        """Strength, timing, and any of the optional control inputs."""
        return {"required": {
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                   "tooltip": "VACE context scale."}),
            "timing": (list(TIMINGS), {"default": "stream", "tooltip": "stream: frame i of the control steers frame "
                                       "i of the stream; call: each queue run starts at the control's frame 0 "
                                       "(live input)."}),
        }, "optional": {
            "control_video": ("IMAGE", {"tooltip": "Control frames (an annotator's output, an outpaint canvas, a "
                              "video to inpaint); scaled and centre-cropped to the sampler's size."}),
            "control_mask": ("MASK", {"tooltip": "White = generate, black = keep the control video's pixels."}),
            "reference_images": ("IMAGE", {"tooltip": "Subject or style references, kept for the whole stream."}),
            "first_frame": ("IMAGE", {"tooltip": "The stream starts on this image (its first frame is kept)."}),
            "last_frame": ("IMAGE", {"tooltip": "Each run's last chunk ends on this image."}),
            "previous": (CONTROL_TYPE, {"tooltip": "Controls chained before this one; their hints add up."}),
        }}

    def build(self, strength, timing, control_video=None, control_mask=None, reference_images=None,
              first_frame=None, last_frame=None, previous=None):
        """Convert the inputs to the engine's layouts and append to the chain."""
        control = Control(
            frames=None if control_video is None else image_to_video(control_video),
            mask=None if control_mask is None else mask_to_video(control_mask),
            references=None if reference_images is None else image_to_video(reference_images).transpose(0, 1),
            first_frame=None if first_frame is None else image_to_video(first_frame[:1])[:, 0],
            last_frame=None if last_frame is None else image_to_video(last_frame[-1:])[:, 0],
            strength=strength, timing=timing)
        return (list(previous or []) + [control],)


class StreamVACESampler:
    """Generate the next chunks of a causal video stream; queue again to continue the same video."""

    DESCRIPTION = ("Causal streaming generation (LongLive / Self-Forcing): each run continues the stream named "
                   "stream_id by 'chunks' chunks of 3 latent frames (the first chunk decodes to 9 frames, each later "
                   "one to 12). The KV cache keeps an attention sink and a rolling window, so every chunk costs the "
                   "same however long the video gets. Changing size, policy or steps restarts the stream; a new "
                   "seed only changes the noise from the next chunk on (the video goes on). Optional: a prompt "
                   "schedule (a prompt per chunk), a clip to continue (prefill), a tiny VAE for previews.")
    CATEGORY = "StreamVACE/sampling"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("samples",)
    OUTPUT_TOOLTIPS = ("This run's chunks as a LATENT (tagged with the stream position), for VAE Decode Stream.",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        """Model, prompt, stream controls, size, sampling settings and optional VAE + VACE controls."""
        return {"required": {
            "model": (MODEL_TYPE, {"tooltip": "From Load Streaming Wan Model."}),
            "positive": ("CONDITIONING", {"tooltip": "From CLIPTextEncode with a umT5-XXL text encoder (type wan)."}),
            "stream_id": ("STRING", {"default": "main", "tooltip": "Name of the stream: queuing again with the "
                          "same id continues the video where the last run stopped."}),
            "reset": ("BOOLEAN", {"default": False, "tooltip": "Start the video over."}),
            "width": ("INT", {"default": 832, "min": 16, "max": 2048, "step": 16, "tooltip": "Video width (multiple "
                      "of 16; 832 as trained). Changing it starts a new stream."}),
            "height": ("INT", {"default": 480, "min": 16, "max": 2048, "step": 16, "tooltip": "Video height "
                       "(multiple of 16; 480 as trained). Changing it starts a new stream."}),
            "chunks": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Chunks generated per queue run."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Noise seed of the "
                     "next chunks. A new seed continues the video with fresh noise (it never restarts the stream), "
                     "so 'randomize after generate' is fine."}),
            "cache_policy": (list(POLICIES), {"default": "longlive", "tooltip": POLICY_TOOLTIP}),
            "steps": ("STRING", {"default": "1000,750,500,250", "tooltip": "Nominal denoising timesteps."}),
            "warp_steps": ("BOOLEAN", {"default": True, "tooltip": "Warp the steps through the shift-5 schedule as "
                                                                   "LongLive / Self-Forcing were trained."}),
        }, "optional": {
            "vae": (VAE_TYPE, {"tooltip": "Needed to encode VACE controls and a prefill clip."}),
            "control": (CONTROL_TYPE, {"tooltip": "VACE controls (VACE Control nodes, chained); needs vae."}),
            "prompts": (PROMPTS_TYPE, {"tooltip": "A Prompt Schedule: a prompt per chunk index, switched with the "
                        "KV re-cache. Before its first entry, positive holds."}),
            "prefill": ("IMAGE", {"tooltip": "An existing clip (at least 9 frames) the stream continues: when the "
                        "stream starts (first run or reset) its last 9 + 12k frames are encoded with vae and "
                        "cached, and generation goes on from there. Later runs ignore it."}),
            "preview_vae": (VAE_TYPE, {"tooltip": "A tiny VAE (taew2_1) for full-size previews of each chunk while "
                            "sampling; without it the previews are a cheap latent-to-RGB approximation."}),
            "deep_sink_frames": ("INT", {"default": 10, "min": 0, "max": 17, "tooltip": DEEP_SINK_TOOLTIP}),
            "deep_top_frames": ("INT", {"default": 2, "min": 0, "max": 17, "tooltip": DEEP_TOP_TOOLTIP}),
        }}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        """Always run: every queue run continues the stream."""
        return float("nan")

    @classmethod
    def VALIDATE_INPUTS(cls, steps):  # naming only `steps` keeps ComfyUI's own range checks on the other inputs
        """Reject a steps string that is not a decreasing list of numbers in (0, 1000]."""
        try:
            parse_steps(steps)
        except ValueError as error:
            return str(error)
        return True

    def sample(self, model, positive, stream_id, reset, width, height, chunks, seed, cache_policy, steps,
               warp_steps, vae=None, control=None, prompts=None, prefill=None, preview_vae=None, deep_sink_frames=10,
               deep_top_frames=2):
        """Continue the stream and return this run's latents (ComfyUI LATENT, tagged with the stream position)."""
        policy = sampler_policy(cache_policy, deep_sink_frames, deep_top_frames)  # refused before anything moves
        use(model, vae)  # back onto the GPU if ComfyUI offloaded them since the last run
        step_list = parse_steps(steps)
        config = StreamConfig(height=height, width=width, policy=policy, steps=step_list,
                              warp_steps=warp_steps, seed=seed)
        prompt, controls = conditioning_to_embedding(positive), list(control or ())
        streams = registry("wan")
        model_key = getattr(model, "streamvace_key", id(model))
        # the seed is not part of what restarts a stream: the frontend randomises it after every run
        signature = (model_key, dataclasses.replace(config, seed=0))
        current = streams.get(stream_id)
        replacing = current if reset else streams.replaced(stream_id, signature)
        check_run(model, config, prompt, chunks, controls, vae, new_stream=current is None or replacing is not None,
                  replacing=replacing)  # a failed check changes nothing
        if reset:
            streams.reset(stream_id)
        session = streams.get_or_create(stream_id, signature, lambda: StreamSession(model, config, vae))
        session.use_model(model)
        session.use_vae(vae)
        session.set_seed(seed)
        scheduled = None if prompts is None else prompts.at(session.chunks_done)  # no needless switch and back
        session.set_prompt(prompt if scheduled is None else scheduled)
        if prefill is not None and session.chunks_done == 0:
            session.prefill_video(image_to_video(prefill))
        progress = host.Progress(chunks * (len(step_list) + 1), "Stream Sampler")
        # compiled blocks are shared by every model of one config (models/wan/fast_path.py): they compile once per
        # config, size and control set, in the first chunk
        size = (model.config, width, height, bool(controls)) if getattr(model, "compiled", False) else None
        if size is not None and size not in _COMPILED_SIZES:
            progress.message(f"compiling the DiT for {width}x{height}{' with control' if controls else ''}: the first "
                             "chunk takes up to a minute longer, once per size")
        first_frame = session.stream.frames_done
        preview = (lambda z: progress.preview(chunk_preview(z, preview_vae))) if progress.shows_previews else None
        latents = session.generate(chunks, controls, on_step=lambda i, n: progress.update(1), prompts=prompts,
                                   on_chunk=preview)
        _COMPILED_SIZES.add(size)  # (None: eager blocks)
        # where these latents sit in which stream: a streaming decoder restarts with the sampler, and fills
        # in chunks that a failed or interrupted run generated but never delivered (see stream_latents)
        return ({**latents_to_comfy(latents), "stream_id": stream_id, "stream_frame": first_frame},)


class StreamVACEChunkFrames:
    """The frames of a video that the stream's next chunks will steer: feed them to an annotator, live."""

    DESCRIPTION = ("Cuts from a long video the frames for the next 'chunks' chunks of the sampler's stream (9 frames "
                   "for a first chunk, 12 for each later one), following the sampler's position, so an annotator only "
                   "processes what this run needs. Connect the result to a VACE Control with timing 'call'. Holds the "
                   "last frame when the video runs out. Frame i of the video is frame i of the stream: when the "
                   "sampler continues a clip (prefill), wire the same clip here, so the first cut starts after it.")
    CATEGORY = "StreamVACE/control"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("The frames the next chunks need, for an annotator and a VACE Control with timing 'call'.",)
    FUNCTION = "cut"

    @classmethod
    def INPUT_TYPES(cls):
        """The whole video, the sampler's stream id, chunks per run, and reset."""
        return {"required": {
            "video": ("IMAGE", {"tooltip": "The whole source video (e.g. from Load Video)."}),
            "stream_id": ("STRING", {"default": "main", "tooltip": "The Stream Sampler's stream_id."}),
            "chunks": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "The Stream Sampler's chunks."}),
            "reset": ("BOOLEAN", {"default": False, "tooltip": "Wire the sampler's reset here too (a sampler "
                                  "that restarts because its size, policy or steps changed also needs it)."}),
        }, "optional": {
            "prefill": ("IMAGE", {"tooltip": "The clip the sampler's prefill continues (wire the same one): a "
                        "stream that starts with this run begins after the clip's prefilled chunks, so the first "
                        "cut lines up with the first generated chunk."}),
        }}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        """Always run: the stream moves on every queue run."""
        return float("nan")

    def cut(self, video, stream_id, chunks, reset, prefill=None):
        """Frames [start, end) of the video for the sampler's next chunks."""
        session = None if reset else registry("wan").get(stream_id)
        done = 0 if session is None else session.chunks_done  # prefilled chunks included
        if done == 0 and prefill is not None:  # as the sampler: an empty stream is prefilled before it generates
            done = prefill_chunks(prefill.shape[0])
        start, end = pixel_frame_start(done), pixel_frame_start(done + chunks)
        index = torch.arange(start, end).clamp(max=video.shape[0] - 1)
        return (video[index],)


NODE_CLASS_MAPPINGS = {
    "StreamVACEChunkFrames": StreamVACEChunkFrames,
    "StreamVACEModelLoader": StreamVACEModelLoader,
    "StreamVACELora": StreamVACELora,
    "StreamVACEControl": StreamVACEControl,
    "StreamVACESampler": StreamVACESampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "StreamVACEChunkFrames": "Frames for Next Chunks (StreamVACE)",
    "StreamVACEModelLoader": "Load Streaming Wan Model (StreamVACE)",
    "StreamVACELora": "LoRA (StreamVACE)",
    "StreamVACEControl": "VACE Control (StreamVACE)",
    "StreamVACESampler": "Stream Sampler (StreamVACE)",
}
