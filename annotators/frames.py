"""The annotators' tensor layouts and the checks every annotator runs on its input.

Layout (the engine's video layout, the same one VACE's context builder consumes):
- a chunk of video is a float tensor [3, T, H, W] (RGB) in [-1, 1], on any device;
- a chunk of masks is a float tensor [1, T, H, W] in [0, 1] (1 = generate / the object).
ComfyUI's IMAGE [T, H, W, 3] in [0, 1] converts to and from it with nodes/convert.py.
Inside an annotator the frames are viewed as a batch of images [T, 3, H, W] in [0, 1].
"""

import functools

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_video(video: torch.Tensor, what: str = "video") -> torch.Tensor:
    """Raise a clear ValueError unless `video` is a non-empty [3, T, H, W] float chunk; returns it."""
    if not isinstance(video, torch.Tensor):
        raise ValueError(f"{what}: expected a torch.Tensor [3, frames, height, width], got {type(video).__name__}")
    if video.ndim != 4:
        raise ValueError(f"{what}: expected 4 dimensions [3, frames, height, width], got shape {tuple(video.shape)}")
    if video.shape[0] != 3:
        raise ValueError(
            f"{what}: expected 3 colour channels first [3, frames, height, width], got {video.shape[0]} channels "
            f"(shape {tuple(video.shape)}); convert grey or RGBA frames to RGB first")
    if video.shape[1] == 0:
        raise ValueError(f"{what}: the chunk has no frames; pass at least one frame")
    if video.shape[2] < 2 or video.shape[3] < 2:
        raise ValueError(f"{what}: frames of {video.shape[2]}x{video.shape[3]} pixels are too small")
    if not video.is_floating_point():
        raise ValueError(f"{what}: expected float values in [-1, 1], got dtype {video.dtype}")
    return video


def check_masks(masks: torch.Tensor, what: str = "masks") -> torch.Tensor:
    """Raise a clear ValueError unless `masks` is a non-empty [1, T, H, W] float chunk; returns it."""
    if not isinstance(masks, torch.Tensor) or masks.ndim != 4 or masks.shape[0] != 1:
        shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"{what}: expected masks [1, frames, height, width], got {shape}")
    if masks.shape[1] == 0:
        raise ValueError(f"{what}: the chunk has no frames; pass at least one mask")
    return masks


def to_images(video: torch.Tensor) -> torch.Tensor:
    """[3, T, H, W] in [-1, 1] -> a batch of images [T, 3, H, W] in [0, 1] (float32)."""
    return (check_video(video).float().transpose(0, 1) * 0.5 + 0.5).clamp(0, 1)


def from_images(images: torch.Tensor) -> torch.Tensor:
    """A batch of images [T, 3, H, W] in [0, 1] -> [3, T, H, W] in [-1, 1]."""
    return (images * 2.0 - 1.0).transpose(0, 1)


def gray_to_video(gray: torch.Tensor) -> torch.Tensor:
    """Grey frames [T, H, W] in [0, 1] -> a 3-channel video [3, T, H, W] in [-1, 1]."""
    return (gray * 2.0 - 1.0).unsqueeze(0).expand(3, *gray.shape).contiguous()


def check_size(height: int, width: int, what: str = "frame size") -> None:
    """Raise a clear ValueError unless height and width are positive integers."""
    if int(height) < 2 or int(width) < 2:
        raise ValueError(f"{what}: height and width must be at least 2 pixels, got {height}x{width}")


@functools.lru_cache(maxsize=64)
def device_constant(values: tuple, device: torch.device, shape: tuple = (-1,)) -> torch.Tensor:
    """A small float32 constant on `device`, copied there once (no host-to-device copy per chunk)."""
    return torch.tensor(values, dtype=torch.float32).view(shape).to(device)


def normalize_imagenet(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> ImageNet mean/std normalised (the ViT / Hiera / DINOv2 input convention)."""
    mean = device_constant(IMAGENET_MEAN, images.device, (1, 3, 1, 1))
    std = device_constant(IMAGENET_STD, images.device, (1, 3, 1, 1))
    return (images - mean) / std
