"""Depth control frames from Depth Anything V2 (transformers DepthAnythingForDepthEstimation), as VACE renders them.

VACE's depth frames: relative depth (inverse depth, near = large) min-max normalised to 0..255, grey in 3 channels,
near = bright. Pre-processing matches transformers' DPT processor for Depth Anything (short side towards 518,
aspect kept, sides multiples of 14, bicubic, ImageNet mean/std) but runs batched on the GPU.

Normalisation ("normalize"):
- "running" (default): one range for the whole chunk, smoothed across chunks: range = m * previous range +
  (1 - m) * this chunk's min/max (m = `range_momentum`; the first chunk takes its own range). Brightness does not
  jump from chunk to chunk the way per-frame min-max does.
- "frame": VACE's per-frame min-max (flickers with the scene content; chunked == whole-clip).
"""

import os

import torch
from torch.nn import functional as F

from ..models.checkpoint_io import CheckpointError
from .frames import gray_to_video, normalize_imagenet, to_images
from .weights import load_hf_model

NORMALIZE = ("running", "frame")


def load_depth_model(path: str, device="cpu", dtype=torch.float32):
    """Depth Anything (V1/V2, any size) from a transformers folder or an original V2 .pth/.safetensors file."""
    from transformers import DepthAnythingForDepthEstimation

    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file or folder. Put depth_anything_v2_vits.pth (or a transformers "
                              "folder such as Depth-Anything-V2-Small-hf) in the 'depthanything' model folder.")
    if os.path.isfile(path):
        from .depth_checkpoint import load_original_depth_anything

        return load_original_depth_anything(path).to(device=device, dtype=dtype)
    return load_hf_model(DepthAnythingForDepthEstimation, path, ("depth_anything",), "Depth Anything",
                         "depth-anything/Depth-Anything-V2-Small-hf", device, dtype)


def _multiple_of(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def network_size(height: int, width: int, resolution: int = 518, multiple: int = 14) -> tuple:
    """The (height, width) transformers' DPT processor resizes a frame to: scale as little as possible."""
    scale_h, scale_w = resolution / height, resolution / width
    scale = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
    return _multiple_of(scale * height, multiple), _multiple_of(scale * width, multiple)


class DepthAnnotator:
    """RGB frames -> depth frames (near = bright); carries the running depth range between chunks."""

    def __init__(self, model, resolution: int = 518, normalize: str = "running", range_momentum: float = 0.9):
        if normalize not in NORMALIZE:
            raise ValueError(f"depth normalize must be one of {NORMALIZE}, got {normalize!r}")
        if not 0.0 <= range_momentum < 1.0:
            raise ValueError(f"range_momentum must be in [0, 1), got {range_momentum}")
        self.model, self.resolution, self.normalize, self.momentum = model, int(resolution), normalize, range_momentum
        self.patch = int(model.config.patch_size)
        self.metric = getattr(model.config, "depth_estimation_type", "relative") == "metric"
        self.range = None  # running (low, high) tensor [2] on the model's device

    def reset(self) -> None:
        """Forget the running range: the next chunk starts a new clip."""
        self.range = None

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """Images [T, 3, H, W] in [0, 1] -> network input (DPT processor: resize to multiples of 14, normalise)."""
        parameter = next(self.model.parameters())
        x = images.to(parameter.device, torch.float32)
        x = F.interpolate(x, size=network_size(*images.shape[-2:], self.resolution, self.patch), mode="bicubic",
                          align_corners=False, antialias=True).clamp_(0, 1)
        return normalize_imagenet(x).to(parameter.dtype)

    @staticmethod
    def resize_depth(depth: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Model depth [T, h, w] -> [T, height, width] (bicubic, as transformers' post-processing)."""
        return F.interpolate(depth.float()[:, None], size=(height, width), mode="bicubic", align_corners=False)[:, 0]

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Raw model depth [T, H, W] at the frames' size (inverse depth; near = large) for images in [0, 1]."""
        depth = self.model(pixel_values=self.pixel_values(images)).predicted_depth
        depth = self.resize_depth(depth, *images.shape[-2:])
        return -depth if self.metric else depth  # metric heads give distance: flip so near stays bright

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        """[3, T, H, W] in [-1, 1] -> depth [3, T, H, W] in [-1, 1] (grey, near = bright)."""
        images = to_images(video)
        depth = self.predict(images)
        if self.normalize == "frame":
            low = depth.amin(dim=(1, 2), keepdim=True)
            high = depth.amax(dim=(1, 2), keepdim=True)
            new_range = None
        else:
            chunk = torch.stack([depth.amin(), depth.amax()])
            new_range = chunk if self.range is None else self.momentum * self.range + (1 - self.momentum) * chunk
            low, high = new_range[0], new_range[1]
        normalised = ((depth - low) / (high - low).clamp(min=1e-6)).clamp(0, 1)
        if new_range is not None:
            self.range = new_range  # committed only after the chunk succeeded
        return gray_to_video(normalised).to(video.device)
