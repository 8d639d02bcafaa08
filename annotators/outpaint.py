"""Outpainting input for VACE: the source video placed on a larger canvas, mask white over the new border.

As VACE's outpainting annotator: the canvas grows by `expand` times the source size on each chosen side; the
border is grey (0 in [-1, 1]) and generated (mask 1), the source area is kept (mask 0).
"""

import torch
import torch.nn.functional as F

SIDES = ("top", "bottom", "left", "right")


def parse_sides(text: str) -> tuple:
    """'left,right' / 'all' -> the sides to extend; a clear error for anything else."""
    sides = SIDES if text.strip() == "all" else tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in sides if s not in SIDES]
    if unknown or not sides:
        raise ValueError(f"outpaint sides must be a comma-separated subset of {', '.join(SIDES)} or 'all', "
                         f"got {text!r}")
    return sides


def inner_box(height: int, width: int, sides, expand: float) -> tuple:
    """(top, left, inner height, inner width) of the source area on a height x width canvas."""
    if not 0 < expand <= 4:
        raise ValueError(f"outpaint expansion must be in (0, 4] (a fraction of the source size), got {expand}")
    inner_h = round(height / (1 + expand * (("top" in sides) + ("bottom" in sides))))
    inner_w = round(width / (1 + expand * (("left" in sides) + ("right" in sides))))
    top = round(inner_h * expand) if "top" in sides else 0
    left = round(inner_w * expand) if "left" in sides else 0
    top = min(top, height - inner_h)
    left = min(left, width - inner_w)
    return top, left, inner_h, inner_w


def outpaint_canvas(video: torch.Tensor, height: int, width: int, sides, expand: float) -> tuple:
    """Source [3, T, h, w] in [-1, 1] -> (frames [3, T, H, W], mask [1, T, H, W]) for a height x width canvas."""
    top, left, inner_h, inner_w = inner_box(height, width, sides, expand)
    frames = video.new_zeros(3, video.shape[1], height, width, dtype=torch.float32)
    scaled = F.interpolate(video.transpose(0, 1).float(), size=(inner_h, inner_w), mode="bilinear",
                           align_corners=False, antialias=True).transpose(0, 1)
    frames[:, :, top:top + inner_h, left:left + inner_w] = scaled
    mask = torch.ones(1, video.shape[1], height, width, device=video.device)
    mask[:, :, top:top + inner_h, left:left + inner_w] = 0
    return frames, mask
