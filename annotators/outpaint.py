"""Outpainting controls: an image or video placed on a larger canvas whose new area VACE generates.

As VACE's OutpaintingAnnotator: the canvas grows by `expand_ratio` of the source size on the chosen sides,
the new area is gray (0 in [-1, 1], VACE's "missing" colour) with mask 1 (= generate), the source keeps
mask 0. Two additions for a stream: the canvas is padded to multiples of 16 (the DiT's patch grid), the
extra rows and columns going to the chosen sides; or, given an output size, the source is scaled so the
whole expanded canvas fits inside it, centred, and everything outside the source is generated.
"""

import math

import torch
import torch.nn.functional as F

from .frames import check_video

SIDES = ("top", "bottom", "left", "right")


def outpaint_padding(height: int, width: int, sides, ratio: float = 0.0, pixels: int = 0) -> dict:
    """Pixels added on each side {top, bottom, left, right}: `pixels` when > 0, else `ratio` of the source size
    (height for top/bottom, width for left/right), on the chosen sides only."""
    unknown = set(sides) - set(SIDES)
    if unknown:
        raise ValueError(f"outpaint sides must be among {SIDES}, got {sorted(unknown)}")
    if ratio < 0 or pixels < 0:
        raise ValueError(f"outpaint expansion must not be negative (ratio {ratio}, pixels {pixels})")
    padding = {}
    for side in SIDES:
        size = height if side in ("top", "bottom") else width
        padding[side] = 0 if side not in sides else (int(pixels) if pixels > 0 else int(round(ratio * size)))
    return padding


def _round_up(padding: dict, first: str, second: str, size: int, multiple: int) -> None:
    extra = -(size + padding[first] + padding[second]) % multiple
    if padding[first] and not padding[second]:
        padding[first] += extra
    elif padding[second] and not padding[first]:
        padding[second] += extra
    else:
        padding[first] += extra // 2
        padding[second] += extra - extra // 2


def outpaint_canvas(video: torch.Tensor, padding: dict, size: tuple = None, multiple: int = 16) -> tuple:
    """Place video [3, T, H, W] in [-1, 1] on a gray canvas grown by `padding`; returns (frames [3, T, H', W'],
    mask [1, T, H', W']), mask 1 outside the source.

    size (height, width): scale so the expanded canvas fits inside it, centred (the rest is generated too);
    None: keep the scale and round the canvas up to multiples of `multiple` on the padded sides.
    """
    check_video(video, "outpaint source")
    _, frames, h, w = video.shape
    pad = {side: int(padding.get(side, 0)) for side in SIDES}
    if any(v < 0 for v in pad.values()):
        raise ValueError(f"outpaint padding must not be negative, got {pad}")
    if size is None:
        _round_up(pad, "top", "bottom", h, multiple)
        _round_up(pad, "left", "right", w, multiple)
        out_h, out_w = h + pad["top"] + pad["bottom"], w + pad["left"] + pad["right"]
        source, top, left = video, pad["top"], pad["left"]
    else:
        out_h, out_w = int(size[0]), int(size[1])
        if out_h <= 0 or out_w <= 0:
            raise ValueError(f"outpaint output size must be positive, got {out_h}x{out_w}")
        grown_h, grown_w = h + pad["top"] + pad["bottom"], w + pad["left"] + pad["right"]
        scale = min(out_h / grown_h, out_w / grown_w)
        new_h, new_w = max(1, math.floor(h * scale)), max(1, math.floor(w * scale))
        source = _resize(video, new_h, new_w)
        top = round(pad["top"] * scale) + (out_h - round(grown_h * scale)) // 2
        left = round(pad["left"] * scale) + (out_w - round(grown_w * scale)) // 2
        top, left = min(max(top, 0), out_h - new_h), min(max(left, 0), out_w - new_w)
    return _place(source, out_h, out_w, top, left)


def _place(source: torch.Tensor, height: int, width: int, top: int, left: int) -> tuple:
    """(gray canvas [3, T, height, width] with source at (top, left), mask [1, T, height, width]: 1 outside it)."""
    _, frames, h, w = source.shape
    canvas = source.new_zeros(3, frames, height, width, dtype=torch.float32)
    mask = source.new_ones(1, frames, height, width, dtype=torch.float32)
    canvas[:, :, top:top + h, left:left + w] = source.float()
    mask[:, :, top:top + h, left:left + w] = 0.0
    return canvas, mask


def _resize(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return F.interpolate(video.transpose(0, 1).float(), size=(height, width), mode="bilinear", align_corners=False,
                         antialias=True).transpose(0, 1)


# ---- the `generate` command: a fixed output size, the source in the box the chosen sides leave ----

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


def outpaint_into_box(video: torch.Tensor, height: int, width: int, sides, expand: float) -> tuple:
    """Source [3, T, h, w] in [-1, 1] -> (frames [3, T, H, W], mask [1, T, H, W]) on a height x width canvas, the
    source scaled into `inner_box` (the generate command reads its input at that size)."""
    top, left, inner_h, inner_w = inner_box(height, width, sides, expand)
    return _place(_resize(video, inner_h, inner_w), height, width, top, left)
