"""Mask utilities for VACE's inpainting input: box masks, static masks, grow / shrink, blur, invert.

Masks are [1, T, H, W] floats in [0, 1]; 1 (white) = the region VACE regenerates, 0 = keep (VACE's src_mask).
All operations are batched over the chunk on the masks' device.
"""

import torch
from torch.nn import functional as F

from .frames import check_masks, check_size
from .layout import LayoutAnnotator
from .scribble import gaussian_blur


def fill_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Boxes [T, N, 4] (x0 y0 x1 y1, pixels, inclusive) -> masks [1, T, H, W]: 1 inside any box."""
    check_size(height, width, "mask size")
    ys = torch.arange(height, device=boxes.device, dtype=torch.float32).view(1, 1, height, 1)
    xs = torch.arange(width, device=boxes.device, dtype=torch.float32).view(1, 1, 1, width)
    x0, y0, x1, y1 = (boxes[..., i, None, None].float() for i in range(4))
    inside = (xs >= x0.round()) & (xs <= x1.round()) & (ys >= y0.round()) & (ys <= y1.round())
    return inside.any(dim=1).float()[None]


def grow_masks(masks: torch.Tensor, pixels: int) -> torch.Tensor:
    """Dilate (pixels > 0) or erode (pixels < 0) masks by a square of that radius."""
    check_masks(masks)
    if pixels == 0:
        return masks
    radius = abs(int(pixels))
    x = masks[0][:, None] if pixels > 0 else 1.0 - masks[0][:, None]
    x = F.max_pool2d(F.pad(x, (radius,) * 4, mode="replicate"), 2 * radius + 1, stride=1)
    return (x if pixels > 0 else 1.0 - x)[:, 0][None]


def blur_masks(masks: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian-feather mask edges (sigma in pixels; 0 = unchanged)."""
    check_masks(masks)
    return masks if sigma <= 0 else gaussian_blur(masks.transpose(0, 1).float(), sigma).transpose(0, 1).clamp(0, 1)


def adjust_masks(masks: torch.Tensor, grow: int = 0, blur: float = 0.0, invert: bool = False,
                 frames: int = 0) -> torch.Tensor:
    """Grow/shrink, then blur, then invert; `frames` > 0 repeats a single (static) mask to that many frames."""
    check_masks(masks)
    if frames > 0 and masks.shape[1] != frames:
        if masks.shape[1] != 1:
            raise ValueError(f"can only repeat a single static mask to {frames} frames, got {masks.shape[1]} masks")
        masks = masks.expand(1, frames, *masks.shape[2:])
    masks = blur_masks(grow_masks(masks.float(), grow), blur)
    return 1.0 - masks if invert else masks.contiguous()


class BoxMaskAnnotator:
    """Filled (optionally moving) box masks from the layout JSON format; the stream carries the frame cursor."""

    def __init__(self, layout: str, height: int, width: int, total_frames: int = 0, box_size: float = 64.0,
                 device="cpu"):
        self.layout = LayoutAnnotator(layout, height, width, total_frames, box_size, device=device)

    def reset(self) -> None:
        """Start again at frame 0."""
        self.layout.reset()

    def __call__(self, frames: int) -> torch.Tensor:
        """The next `frames` masks [1, frames, H, W]; advances the cursor."""
        if int(frames) < 1:
            raise ValueError(f"box masks: ask for at least one frame, got {frames}")
        boxes = torch.from_numpy(self.layout.boxes(int(frames))).to(self.layout.device)
        masks = fill_boxes(boxes, self.layout.height, self.layout.width)
        self.layout.cursor += int(frames)
        return masks
