"""Building VACE's 96-channel context for each chunk of a stream, from control frames, masks and references.

context = [VAE(frames * (1 - m)) (16) | VAE(frames * m) (16) | mask (64)], m = 1 where the model generates
or reacts. Pure control video (depth, pose, scribble, flow, gray, layout) uses m = 1 everywhere; inpainting
and outpainting give m = 1 over the region to fill; first/last-frame extension gives m = 0 over the given
frames. The inactive and reactive parts are encoded as two separate VAE streams whose encoder caches
continue from chunk to chunk and never mix. A chunk takes 1 + 4(F-1) pixel frames the first time (9 for
F = 3) and 4F after (12), exactly the frames its latents decode to.

The mask's 8x8 pixel blocks become its 64 channels (channel = 8*row + column, as in VACE). In time, VACE
(`vace_encode_masks`, and Scope per chunk after it) samples one pixel frame per latent frame with
nearest-exact interpolation: frames 1, 4, 7 of a 9-frame first chunk, 2, 6, 10 of a 12-frame chunk. The
released weights were trained so, and it is the default; "max" instead takes the maximum over each VAE
group, so a pixel marked for generation in any frame of the group is never kept from the source.
"""

import torch
import torch.nn.functional as F

from ..checks import check_finite, check_values

MASK_CHANNELS = 64
MASK_TIME_SAMPLING = ("nearest", "max")


def pixel_frames_for_chunk(chunk_index: int, chunk_frames: int = 3) -> int:
    """Pixel frames consumed (and produced) by chunk `chunk_index`: 1 + 4(F-1) first, then 4F."""
    return 1 + 4 * (chunk_frames - 1) if chunk_index == 0 else 4 * chunk_frames


def pixel_frame_start(chunk_index: int, chunk_frames: int = 3) -> int:
    """Index of the first pixel frame of chunk `chunk_index` in the stream."""
    return 0 if chunk_index == 0 else pixel_frames_for_chunk(0, chunk_frames) + 4 * chunk_frames * (chunk_index - 1)


def prefill_chunks(clip_frames: int, chunk_frames: int = 3) -> int:
    """Whole chunks a clip of `clip_frames` frames fills when a stream is prefilled from it (its last 9 + 12k
    frames; older ones are dropped); 0 when it is shorter than a first chunk."""
    first, later = pixel_frames_for_chunk(0, chunk_frames), pixel_frames_for_chunk(1, chunk_frames)
    return 0 if clip_frames < first else 1 + (clip_frames - first) // later


def mask_to_latent_channels(mask: torch.Tensor, first_chunk: bool, time: str = "nearest") -> torch.Tensor:
    """Binary mask [B, 1, T, H, W] -> [B, 64, t, H/8, W/8]; in time VACE's nearest-exact sample or the group max."""
    if time == "nearest":  # VACE: t = (T + 3) // 4 latent frames, pixel frame floor((i + 1/2) * T / t)
        t = (mask.shape[2] + 3) // 4
        per_latent = F.interpolate(mask, size=(t, *mask.shape[3:]), mode="nearest-exact")
    elif time == "max":
        groups = [mask[:, :, :1]] + list(mask[:, :, 1:].split(4, dim=2)) if first_chunk else list(mask.split(4, dim=2))
        per_latent = torch.cat([g.amax(dim=2, keepdim=True) for g in groups], dim=2)
    else:
        raise ValueError(f"unknown mask sampling in time {time!r}; choose one of {MASK_TIME_SAMPLING}")
    b, _, t, h, w = per_latent.shape
    unshuffled = F.pixel_unshuffle(per_latent.transpose(1, 2).reshape(b * t, 1, h, w), 8)
    return unshuffled.reshape(b, t, MASK_CHANNELS, h // 8, w // 8).transpose(1, 2)


def fit_image(image: torch.Tensor, height: int, width: int, fill: float = 1.0) -> torch.Tensor:
    """Resize [B, 3, H, W] to fit inside height x width keeping its aspect, centred on a `fill` canvas."""
    _, _, h, w = image.shape
    scale = min(height / h, width / w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    resized = F.interpolate(image, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    canvas = image.new_full((image.shape[0], 3, height, width), fill)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[:, :, top:top + new_h, left:left + new_w] = resized
    return canvas


class VaceContextBuilder:
    """Per-stream VACE context builder: two VAE encoder streams (inactive / reactive), advanced per chunk.

    `context_for_chunk` encodes on copies of the caches; `commit` adopts them once the chunk succeeded,
    so a failed or interrupted chunk leaves the builder exactly as it was.
    """

    def __init__(self, vae, height: int, width: int, chunk_frames: int = 3, batch: int = 1, start_chunk: int = 0,
                 mask_time: str = "nearest"):
        if mask_time not in MASK_TIME_SAMPLING:
            raise ValueError(f"unknown mask sampling in time {mask_time!r}; choose one of {MASK_TIME_SAMPLING}")
        self.vae, self.height, self.width, self.mask_time = vae, height, width, mask_time
        self.chunk_frames, self.batch = chunk_frames, batch
        self.inactive = vae.new_encoder_cache()
        self.reactive = vae.new_encoder_cache()
        self.chunks = start_chunk
        self._fresh = True  # encoder streams not started yet
        self._pending = None

    def frames_needed(self) -> int:
        """Pixel frames the next chunk's control takes."""
        return pixel_frames_for_chunk(self.chunks, self.chunk_frames)

    def context_for_chunk(self, frames: torch.Tensor = None, mask: torch.Tensor = None) -> torch.Tensor:
        """VACE context [B, 96, F, h, w] for the next chunk.

        frames [B, 3, T, H, W] in [-1, 1] (None: gray, i.e. no control); mask [B, 1, T, H, W] in [0, 1]
        (None: all ones). T must be `frames_needed()`.
        """
        t = self.frames_needed()
        shape = (self.batch, t, self.height, self.width)
        device, dtype = self.vae.device, self.vae.dtype
        for name, tensor, channels, low in (("control frames", frames, 3, -1.0), ("control mask", mask, 1, 0.0)):
            if tensor is None:
                continue
            if tensor.ndim != 5 or tensor.shape[1] != channels or (tensor.shape[0], *tensor.shape[2:]) != shape:
                raise ValueError(f"{name} must be [{self.batch}, {channels}, {t}, {self.height}, {self.width}] for "
                                 f"chunk {self.chunks}, got {tuple(tensor.shape)}")
            if tensor.device.type == "cpu":  # on a GPU the caller checks once per call (no sync per chunk)
                check_values(tensor, name, low, 1.0)
        if frames is None:  # gray: no control
            frames = torch.zeros(self.batch, 3, t, self.height, self.width, device=device)
        if mask is None:  # generate everywhere
            mask = torch.ones(self.batch, 1, t, self.height, self.width, device=device)
        frames = frames.to(device, torch.float32)
        binary = (mask.to(device, torch.float32) > 0.5).float()
        inactive_cache, reactive_cache = self.inactive.copy(), self.reactive.copy()
        inactive = self._encode((frames * (1 - binary)).to(dtype), inactive_cache)
        reactive = self._encode((frames * binary).to(dtype), reactive_cache)
        self._pending = (inactive_cache, reactive_cache)
        mask_channels = mask_to_latent_channels(binary, first_chunk=self.chunks == 0, time=self.mask_time)
        return torch.cat([inactive.float(), reactive.float(), mask_channels], dim=1)

    def _encode(self, video, cache):
        if self._fresh and self.chunks > 0:
            # A control that joins mid-stream: a VAE stream starts with a lone frame, so lead with a copy of
            # the chunk's first frame and drop its latent; the groups then line up with the stream's.
            video = torch.cat([video[:, :, :1], video], dim=2)
            return self.vae.encode(video, cache=cache, check_inputs=False)[:, :, 1:]
        return self.vae.encode(video, cache=cache, check_inputs=False)  # checked once per call, by the session

    def commit(self) -> None:
        """Adopt the caches of the last built chunk (call after the chunk was generated)."""
        if self._pending is None:
            raise RuntimeError("no built VACE context to commit")
        self.inactive, self.reactive = self._pending
        self._pending, self._fresh = None, False
        self.chunks += 1

    def reference_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Reference images [N, 3, H, W] in [-1, 1] -> latents [B, 16, N, h, w], each encoded alone."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
            raise ValueError(f"reference images must be [count, 3, height, width], got {tuple(images.shape)}")
        if images.device.type == "cpu":
            check_finite(images, "reference images")
        fitted = fit_image(images.float(), self.height, self.width)
        latents = [self.vae.encode(img[None, :, None].to(self.vae.device, self.vae.dtype)) for img in fitted]
        return torch.cat(latents, dim=2).float().expand(self.batch, -1, -1, -1, -1)


def frame_reference_control(length: int, first: torch.Tensor = None, last: torch.Tensor = None,
                            frames: torch.Tensor = None, mask: torch.Tensor = None) -> tuple:
    """Frames and mask for first/last-frame extension over one chunk of `length` pixel frames.

    first / last: [3, H, W] in [-1, 1]. The first image is kept at frame 0, the last image over the last
    4 frames (one whole VAE group, so the encoder sees it cleanly); those frames get mask 0 (keep), all
    others mask 1 and gray, unless `frames` / `mask` [C, T, H, W] are given to composite onto.
    """
    image = first if first is not None else last
    if image is None:
        raise ValueError("first/last-frame extension needs a first or a last frame")
    _, h, w = image.shape
    frames = image.new_zeros(3, length, h, w) if frames is None else frames.clone()  # on the image's device
    mask = image.new_ones(1, length, h, w) if mask is None else mask.clone()
    if first is not None:
        frames[:, 0], mask[:, 0] = first, 0.0
    if last is not None:
        frames[:, -4:], mask[:, -4:] = last[:, None], 0.0
    return frames, mask


EXTENSION_MODES = ("first_clip", "last_clip", "first_last_clip")


def stream_length(frames: int, chunk_frames: int = 3) -> tuple:
    """(pixel frames, chunks) of the shortest stream holding at least `frames` frames (9, 21, 33, ... for F = 3)."""
    chunks = 1
    while pixel_frame_start(chunks, chunk_frames) < frames:
        chunks += 1
    return pixel_frame_start(chunks, chunk_frames), chunks


def clip_extension_control(mode: str, clip: torch.Tensor, generate: int, end_clip: torch.Tensor = None,
                           chunk_frames: int = 3) -> tuple:
    """Control frames and mask that extend known clips (VACE's firstclip / lastclip / firstlastclip).

    clip / end_clip: [3, T, H, W] in [-1, 1]. first_clip: the clip, then `generate` new frames; last_clip:
    `generate` new frames leading up to the clip; first_last_clip: clip, `generate` new frames, end_clip.
    Known frames get mask 0, new ones gray with mask 1. The total is rounded up to a whole stream
    (9 + 12k frames), the extra frames generated (after the clip, before it, or in the gap). Returns
    (frames [3, N, H, W], mask [1, N, H, W], chunks).
    """
    if mode not in EXTENSION_MODES:
        raise ValueError(f"extension mode must be one of {EXTENSION_MODES}, got {mode!r}")
    if generate < 0:
        raise ValueError(f"frames to generate must not be negative, got {generate}")
    if (end_clip is None) != (mode != "first_last_clip"):
        raise ValueError("first_last_clip needs an end clip (and only it does): connect end_clip for it")
    for name, video in (("clip", clip), ("end_clip", end_clip)):
        if video is not None and (video.ndim != 4 or video.shape[0] != 3 or video.shape[1] == 0):
            raise ValueError(f"the {name} must be a video [3, frames, height, width], got {tuple(video.shape)}")
    if end_clip is not None and end_clip.shape[2:] != clip.shape[2:]:
        raise ValueError(f"clip and end_clip differ in size ({tuple(clip.shape[2:])} vs {tuple(end_clip.shape[2:])}); "
                         "scale them to one size first")
    known = clip.shape[1] + (0 if end_clip is None else end_clip.shape[1])
    total, chunks = stream_length(known + generate, chunk_frames)
    frames = clip.new_zeros(3, total, *clip.shape[2:], dtype=torch.float32)
    mask = clip.new_ones(1, total, *clip.shape[2:], dtype=torch.float32)
    if mode in ("first_clip", "first_last_clip"):
        frames[:, :clip.shape[1]], mask[:, :clip.shape[1]] = clip.float(), 0.0
    tail = clip if mode == "last_clip" else end_clip
    if tail is not None:
        frames[:, total - tail.shape[1]:], mask[:, total - tail.shape[1]:] = tail.float(), 0.0
    return frames, mask, chunks
