"""Nodes for the streaming VAEs: load the Wan2.1 VAE or the tiny VAE, and encode / decode a stream chunk by chunk.

The decoder and encoder caches live in the stream registries "vae_decode" and "vae_encode", keyed by
stream_id, so queuing the graph again continues the same stream.
"""

import torch

from ..models.vae.latent_format import comfy_to_latents, latents_to_comfy
from ..models.vae.tiny_vae import load_tiny_vae
from ..models.vae.cache import check_latent_values, check_video_values
from ..models.vae.stream import DecodeStream, EncodeStream
from ..models.vae.wan_vae import load_wan_vae
from . import host
from .model_cache import cached, file_key, use
from .model_lists import UNINSPECTED_NOTE, vae_files
from .convert import image_to_video, video_to_image
from .streams import registry, stream_latents
from .types import DTYPE_INPUT, DTYPES, STREAM_INPUTS, VAE_TYPE

CHUNK_LATENTS = 3  # latent frames per sampler chunk: decode (and report progress) one chunk at a time


def _cached_vae(loader, path: str, dtype: str):
    """The VAE for this file and precision, memoised: the same object keeps decoder streams going seamlessly."""
    device = host.torch_device()
    key = (loader.__name__, file_key(path), dtype, str(device))
    progress = host.Progress(1)
    vae = cached(key, lambda: loader(path, dtype=DTYPES[dtype], device=device))
    progress.update(1)
    return vae


class StreamVACELoadWanVAE:
    """Load the Wan2.1 causal VAE (full quality) from the 'vae' model folder."""

    DESCRIPTION = ("Loads the Wan2.1 VAE (Wan2.1_VAE.pth or wan_2.1_vae.safetensors from models/vae) for the streaming "
                   "encode/decode nodes and the StreamVACE sampler.")
    CATEGORY = "StreamVACE/vae"
    RETURN_TYPES = (VAE_TYPE,)
    RETURN_NAMES = ("vae",)
    OUTPUT_TOOLTIPS = ("The Wan2.1 VAE, for the sampler (controls, prefill) and the stream encode/decode nodes.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        """A file from models/vae and a precision."""
        return {"required": {
            "vae_name": (vae_files("vae", ("wan_vae",)), {"tooltip": "Wan2.1_VAE.pth or wan_2.1_vae.safetensors "
                         "from models/vae; VAEs of other models are not listed. " + UNINSPECTED_NOTE}),
            "dtype": DTYPE_INPUT,
        }}

    def load(self, vae_name, dtype):
        """Read the file onto ComfyUI's device."""
        return (_cached_vae(load_wan_vae, host.model_path("vae", vae_name), dtype),)


class StreamVACELoadTinyVAE:
    """Load the TAEHV tiny VAE for Wan2.1 (fast, lower quality) from the 'vae_approx' model folder."""

    DESCRIPTION = ("Loads the tiny VAE taew2_1 (.pth or .safetensors, from models/vae_approx): several times faster "
                   "than the full VAE, for previews and real-time output. Same frame counts as the full VAE.")
    CATEGORY = "StreamVACE/vae"
    RETURN_TYPES = (VAE_TYPE,)
    RETURN_NAMES = ("vae",)
    OUTPUT_TOOLTIPS = ("The tiny VAE: decode, previews (the sampler's preview_vae), or the sampler's vae.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        """A file from models/vae_approx and a precision."""
        return {"required": {
            "vae_name": (vae_files("vae_approx", ("tiny_vae",)), {"tooltip": "taew2_1.pth or taew2_1.safetensors "
                         "from models/vae_approx; tiny VAEs of other models (taesd, ...) are not listed. "
                         + UNINSPECTED_NOTE}),
            "dtype": DTYPE_INPUT,
        }}

    def load(self, vae_name, dtype):
        """Read the file onto ComfyUI's device."""
        return (_cached_vae(load_tiny_vae, host.model_path("vae_approx", vae_name), dtype),)


class StreamVACEVAEDecodeStream:
    """Decode the next chunk of a stream's latents to frames, continuing the decoder cache of earlier queue runs."""

    DESCRIPTION = ("Decodes Wan2.1 latents chunk by chunk: the first chunk of n latents gives 1 + 4(n-1) frames, every "
                   "later chunk 4n (3 latents: 9, then 12). The VAE may change between runs (full <-> tiny).")
    CATEGORY = "StreamVACE/vae"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("This run's frames (9 for a first chunk, 12 per later chunk), plus any a failed run missed.",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        """A VAE, a latent chunk and the stream controls."""
        return {"required": {
            "vae": (VAE_TYPE, {"tooltip": "From a StreamVACE VAE loader."}),
            "samples": ("LATENT", {"tooltip": "The next chunk of Wan2.1 video latents."}),
            **STREAM_INPUTS,
        }}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        """Always run: every queue run decodes the next chunk."""
        return float("nan")

    def decode(self, vae, samples, stream_id, reset):
        """LATENT -> IMAGE [frames, H, W, 3]; batches are placed one after another."""
        host.check_interrupted()
        use(vae)
        latents = comfy_to_latents(samples)
        check_latent_values(latents)  # before a reset: a refused run leaves the stream as it was
        streams = registry("vae_decode")
        if reset:
            streams.reset(stream_id)
        state = streams.get_or_create(stream_id, "decode", DecodeStream)
        first = samples.get("stream_frame")  # set by the Stream Sampler
        if first and state.next_frame is not None and first > state.next_frame:
            # chunks generated by a run that failed after the sampler: decode them first, nothing is lost
            missing = stream_latents(samples.get("stream_id", ""), state.next_frame, first)
            if missing is not None:
                video = state.decode_with_missing(vae, missing, latents)
                return (torch.cat([video_to_image(clip) for clip in video]),)
        pieces = list(latents.split(CHUNK_LATENTS, dim=2))
        progress, video, start = host.Progress(len(pieces)), [], first
        for piece in pieces:  # the decoder cache carries over, so decoding chunk by chunk is the same video
            video.append(state.decode(vae, piece, start))
            start = None if start is None else start + piece.shape[2]
            progress.update(1)
        return (torch.cat([video_to_image(clip) for clip in torch.cat(video, dim=2)]),)


class StreamVACEVAEEncodeStream:
    """Encode the next chunk of frames to latents, continuing the encoder cache of earlier queue runs."""

    DESCRIPTION = ("Encodes frames chunk by chunk to Wan2.1 latents: the first chunk needs 1 + 4k frames (9 -> 3 "
                   "latents), later chunks 4k frames (12 -> 3). Width and height must be multiples of 16.")
    CATEGORY = "StreamVACE/vae"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("samples",)
    OUTPUT_TOOLTIPS = ("Raw Wan2.1 latents of this chunk (as ComfyUI's VAEEncode gives).",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        """A VAE, a chunk of frames and the stream controls."""
        return {"required": {
            "vae": (VAE_TYPE, {"tooltip": "From a StreamVACE VAE loader."}),
            "frames": ("IMAGE", {"tooltip": "The next chunk of frames."}),
            **STREAM_INPUTS,
        }}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        """Always run: every queue run encodes the next chunk."""
        return float("nan")

    def encode(self, vae, frames, stream_id, reset):
        """IMAGE -> LATENT (raw, as ComfyUI's VAEEncode gives)."""
        host.check_interrupted()
        use(vae)
        video = image_to_video(frames)[None]
        check_video_values(video)  # before a reset: a refused run leaves the stream as it was
        streams = registry("vae_encode")
        if reset:
            streams.reset(stream_id)
        latents = streams.get_or_create(stream_id, "encode", EncodeStream).encode(vae, video)
        return (latents_to_comfy(latents),)


NODE_CLASS_MAPPINGS = {
    "StreamVACELoadWanVAE": StreamVACELoadWanVAE,
    "StreamVACELoadTinyVAE": StreamVACELoadTinyVAE,
    "StreamVACEVAEDecodeStream": StreamVACEVAEDecodeStream,
    "StreamVACEVAEEncodeStream": StreamVACEVAEEncodeStream,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "StreamVACELoadWanVAE": "Load Wan2.1 VAE (StreamVACE)",
    "StreamVACELoadTinyVAE": "Load Tiny VAE taew2_1 (StreamVACE)",
    "StreamVACEVAEDecodeStream": "VAE Decode Stream (StreamVACE)",
    "StreamVACEVAEEncodeStream": "VAE Encode Stream (StreamVACE)",
}
