"""Streaming state shared by both VAEs: the per-stream cache object and the chunk frame-count rules.

Frame-count rules (identical for the Wan2.1 VAE and the tiny VAE, so a stream can switch between them):

- encode: the first chunk of a stream has 1 + 4k frames and gives 1 + k latents (frame 0 alone is
  latent 0); every later chunk has 4k frames and gives k latents. Latent i covers frames 4i-3 .. 4i.
- decode: the first chunk of n latents gives 1 + 4(n-1) frames (latent 0 decodes to 1 frame); every
  later chunk of n latents gives 4n frames. The engine's 3-latent chunks decode to 9, then 12 frames.

A cache holds one tensor (or None) per layer that looks back in time. Encode/decode read the slots,
compute new ones in a temporary list and commit them only when the whole chunk succeeded, so a failed
or interrupted call leaves the stream exactly as it was.
"""

import torch

from ..checks import check_finite, check_values

from .latent_format import check_latents

SPATIAL_FACTOR = 8
TEMPORAL_FACTOR = 4
SIZE_MULTIPLE = 16  # the Wan DiT patchifies latents 2x2, so frames must be multiples of 8 * 2


class VAECache:
    """The streaming state of one encoder or decoder stream: one slot per temporal layer, plus a chunk count."""

    def __init__(self, owner: str, role: str, num_slots: int, mid_stream: bool = False):
        self.owner = owner  # architecture tag, so a cache is never fed to another kind of VAE
        self.role = role  # "encoder" or "decoder"
        self.mid_stream = mid_stream
        self.slots = [None] * num_slots
        self.chunks = 0
        self.frame_shape = None  # (batch, height, width, dtype, device) fixed by the first chunk

    @property
    def first_chunk(self) -> bool:
        """True while the next chunk is the first one of the stream (frame 0 / latent 0 handled alone)."""
        return self.chunks == 0 and not self.mid_stream

    def reset(self) -> None:
        """Forget the stream: the next chunk is a first chunk again (or mid-stream, if created so)."""
        self.slots = [None] * len(self.slots)
        self.chunks = 0
        self.frame_shape = None

    def copy(self) -> "VAECache":
        """An independent copy that continues the stream from the same point.

        Slot tensors are never changed in place (a call computes new ones and commits a new list), so the
        copy shares them: copying a full-size Wan encoder cache (~1 GiB at 480x832) costs nothing.
        """
        twin = VAECache(self.owner, self.role, len(self.slots), self.mid_stream)
        twin.slots = list(self.slots)
        twin.chunks = self.chunks
        twin.frame_shape = self.frame_shape
        return twin

    def check_owner(self, owner: str, role: str) -> None:
        """Raise unless this cache belongs to a VAE of this architecture and to this direction."""
        if self.owner != owner or self.role != role:
            raise ValueError(
                f"this cache is a {self.role} cache of {self.owner}, but it was given to the {role} of "
                f"{owner}. Create one with that VAE's new_{role}_cache().")

    def check_frame_shape(self, frame_shape: tuple) -> None:
        """Raise if a chunk's batch, size, dtype or device differs from the ones the stream started with."""
        if self.frame_shape is not None and self.frame_shape != frame_shape:
            batch, height, width, dtype, device = self.frame_shape
            raise ValueError(
                f"this {self.role} stream was started with batch {batch}, {height}x{width}, {dtype} on {device}; "
                f"this chunk has batch {frame_shape[0]}, {frame_shape[1]}x{frame_shape[2]}, {frame_shape[3]} on "
                f"{frame_shape[4]}. Reset the stream (cache.reset()) to change them.")

    def commit(self, slots: list, frame_shape: tuple) -> None:
        """Store the slots computed by a successful chunk."""
        self.slots = slots
        self.chunks += 1
        self.frame_shape = frame_shape

    def __repr__(self):
        return f"VAECache({self.owner}, {self.role}, chunks={self.chunks}, mid_stream={self.mid_stream})"


class CacheStep:
    """The slots being computed by one encode/decode call: reads see the committed state, writes go to a copy."""

    def __init__(self, cache: VAECache):
        self.slots = list(cache.slots)
        self.first = cache.first_chunk  # True only for the pass that handles frame 0 / latent 0

    def read(self, slot: int):
        """The slot's tensor from the previous pass or chunk (None at the start of a stream)."""
        return self.slots[slot]

    def write(self, slot: int, value) -> None:
        """Set the slot's new tensor (committed only if the whole call succeeds)."""
        self.slots[slot] = value


def latents_per_chunk(frames: int, first_chunk: bool) -> int:
    """Latents an encoder chunk of `frames` frames gives (1 + k for 1 + 4k first, k for 4k later)."""
    return (frames - 1) // TEMPORAL_FACTOR + 1 if first_chunk else frames // TEMPORAL_FACTOR


def frames_per_chunk(latents: int, first_chunk: bool) -> int:
    """Frames a decoder chunk of `latents` latents gives (1 + 4(n-1) first, 4n later)."""
    return TEMPORAL_FACTOR * (latents - 1) + 1 if first_chunk else TEMPORAL_FACTOR * latents


def check_video_chunk(video: torch.Tensor, first_chunk: bool) -> None:
    """Raise a clear error unless `video` is [B,3,T,H,W] float with H, W multiples of 16 and T fitting the chunk rule."""
    if not isinstance(video, torch.Tensor):
        raise TypeError(f"video must be a torch.Tensor [B,3,T,H,W] in [-1,1], got {type(video).__name__}")
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(
            f"video must be [batch, 3 (RGB), frames, height, width] in [-1,1], got shape {tuple(video.shape)}. "
            "Drop the alpha channel / expand gray to RGB, and put channels before frames.")
    if not video.is_floating_point():
        raise TypeError(f"video must be floating point in [-1,1], got {video.dtype}; convert with x / 127.5 - 1")
    frames, height, width = video.shape[2:]
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or height == 0 or width == 0:
        raise ValueError(
            f"video frames are {height}x{width}; height and width must be positive multiples of {SIZE_MULTIPLE}. "
            f"Resize or crop to e.g. {max(SIZE_MULTIPLE, height // SIZE_MULTIPLE * SIZE_MULTIPLE)}x"
            f"{max(SIZE_MULTIPLE, width // SIZE_MULTIPLE * SIZE_MULTIPLE)} first.")
    if first_chunk and (frames - 1) % TEMPORAL_FACTOR:
        raise ValueError(
            f"the first chunk of a stream (or a whole clip) must have 1 + 4k frames (1, 5, 9, 13, ...), got {frames}. "
            f"Frame 0 becomes latent 0 alone; trim to {(frames - 1) // 4 * 4 + 1} frames or add frames.")
    if not first_chunk and (frames == 0 or frames % TEMPORAL_FACTOR):
        raise ValueError(
            f"after the first chunk every chunk must have a positive multiple of 4 frames, got {frames}. "
            "Send 4, 8, 12, ... frames, or reset the stream to start a new clip.")


def check_video_values(video: torch.Tensor) -> None:
    """Raise a clear error unless the frames are finite and in [-1, 1] (one host sync: call once per call)."""
    check_values(video, "the video frames given to the VAE", -1.0, 1.0,
                 "the VAE takes video in [-1, 1] (ComfyUI IMAGE in [0, 1] converts as x * 2 - 1)")


def check_latent_values(latents: torch.Tensor) -> None:
    """Raise a clear error if the latents hold NaN or infinite values (one host sync: call once per call)."""
    check_finite(latents, "the latents given to the VAE decoder",
                 "the sampler or a node before the decoder produced them; NaN latents decode to black frames")


def check_latent_chunk(latents: torch.Tensor) -> None:
    """Raise a clear error unless `latents` is [B,16,T>0,h,w] with h, w even (frames a multiple of 16 pixels)."""
    check_latents(latents)
    frames, height, width = latents.shape[2:]
    if frames == 0:
        raise ValueError("the latent chunk has no frames")
    if height % 2 or width % 2 or height == 0 or width == 0:
        raise ValueError(
            f"latents are {height}x{width} ({height * 8}x{width * 8} pixels); they must be even (frames a multiple "
            "of 16 pixels), as the Wan DiT makes them.")


def frame_shape_of(x: torch.Tensor) -> tuple:
    """The (batch, height, width, dtype, device) signature that must stay fixed within a stream."""
    return (x.shape[0], x.shape[-2], x.shape[-1], x.dtype, x.device)


def begin_call(cache: VAECache, owner: str, role: str, x: torch.Tensor) -> tuple:
    """Check that `cache` belongs to this VAE direction and stream, and open a step on it: (frame shape, step)."""
    cache.check_owner(owner, role)
    shape = frame_shape_of(x)
    cache.check_frame_shape(shape)
    return shape, CacheStep(cache)


class StreamingVAE:
    """The start of every encode and decode call, the same for both VAEs: a new stream when no cache is given,
    the chunk's checks, the input on the VAE's device and dtype, and a step on the cache.

    A VAE sets `_owner` and has `device`, `dtype`, `new_encoder_cache()` and `new_decoder_cache()`;
    `_decoder_input` turns checked normalised latents into what its decoder takes.
    """

    def _decoder_input(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.to(device=self.device, dtype=self.dtype)

    def _begin_encode(self, video: torch.Tensor, cache, check_inputs: bool = True) -> tuple:
        """(frames on the VAE, cache, frame shape, step) for an encode call; check_inputs=False skips the value
        check (a caller that checked its inputs once per call: no sync per chunk)."""
        cache = self.new_encoder_cache() if cache is None else cache
        check_video_chunk(video, cache.first_chunk)
        if check_inputs:
            check_video_values(video)
        x = video.to(device=self.device, dtype=self.dtype)
        shape, step = begin_call(cache, self._owner, "encoder", x)
        return x, cache, shape, step

    def _begin_decode(self, latents: torch.Tensor, cache, check_inputs: bool = True) -> tuple:
        """(decoder input, cache, frame shape, step) for a decode call."""
        cache = self.new_decoder_cache() if cache is None else cache
        check_latent_chunk(latents)
        if check_inputs:
            check_latent_values(latents)
        x = self._decoder_input(latents)
        shape, step = begin_call(cache, self._owner, "decoder", x)
        return x, cache, shape, step
