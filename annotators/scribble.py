"""Scribble / edge control frames: dark lines on white, as in VACE's scribble task.

Methods:
- "xdog" (default, weight-free, GPU): difference of Gaussians (sigma 0.5 and 5.0) thresholded, the XDoG-style
  scribble of comfyui_controlnet_aux; lines where the pixel is darker than its surroundings.
- "canny" (weight-free, OpenCV on CPU threads): cv2.Canny(low, high) on the RGB frame (thresholds on 0..255).
- "model": a learned line-drawing net (annotators/line_model.py; VACE's own scribble annotator uses one).
All are per-frame, so chunked annotation equals whole-clip annotation exactly.
"""

import math

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from .cpu import images_to_uint8, map_frames, uint8_to_images
from .frames import gray_to_video, to_images

METHODS = ("xdog", "canny", "model")


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [B, C, H, W] with OpenCV's kernel size and reflect-101 border (its default)."""
    radius = max(1, int(round(sigma * 4)))  # cv2 picks ksize = round(sigma*8 + 1) | 1 for float images
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.dtype)
    channels = images.shape[1]
    mode = "reflect" if min(images.shape[-2:]) > radius else "replicate"
    x = F.pad(images, (radius, radius, 0, 0), mode=mode)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    x = F.pad(x, (0, 0, radius, radius), mode=mode)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def xdog_lines(images: torch.Tensor, threshold: float = 32.0, sigma_small: float = 0.5,
               sigma_large: float = 5.0) -> torch.Tensor:
    """[T, 3, H, W] in [0, 1] -> line mask [T, H, W] in {0, 1}: where 2*(blur_large - blur_small) > threshold/255."""
    difference = (gaussian_blur(images, sigma_large) - gaussian_blur(images, sigma_small)).amin(dim=1)
    return (2.0 * difference > threshold / 255.0).to(images.dtype)


def canny_lines(images: torch.Tensor, low: int = 100, high: int = 200) -> torch.Tensor:
    """[T, 3, H, W] in [0, 1] -> edge mask [T, H, W] in {0, 1} from cv2.Canny on CPU threads."""
    frames = images_to_uint8(images)
    edges = np.stack(map_frames(lambda frame: cv2.Canny(frame, low, high), frames))
    return uint8_to_images(edges[..., None], images.device)[:, 0]


class ScribbleAnnotator:
    """RGB frames -> scribble frames (dark lines on white by default); stateless per frame."""

    def __init__(self, method: str = "xdog", threshold: float = 32.0, canny_low: int = 100, canny_high: int = 200,
                 line_model=None, invert: bool = False):
        if method not in METHODS:
            raise ValueError(f"scribble method must be one of {METHODS}, got {method!r}")
        if method == "model" and line_model is None:
            raise ValueError("scribble method 'model' needs a line model: load one with "
                             "annotators.line_model.load_line_model (e.g. VACE's netG_A_latest.pth)")
        if not (0 <= canny_low <= canny_high) or not math.isfinite(threshold):
            raise ValueError(f"bad thresholds: canny {canny_low}..{canny_high}, xdog {threshold}")
        self.method, self.threshold, self.invert = method, threshold, invert
        self.canny_low, self.canny_high = canny_low, canny_high
        self.line_model = line_model

    @torch.inference_mode()
    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        """[3, T, H, W] in [-1, 1] -> scribble [3, T, H, W] in [-1, 1] (white = 1, lines dark)."""
        images = to_images(video)
        if self.method == "model":
            parameter = next(self.line_model.parameters())
            paper = self.line_model(images.to(parameter.device, parameter.dtype))[:, 0].float().to(images.device)
        else:
            lines = xdog_lines(images, self.threshold) if self.method == "xdog" else canny_lines(
                images, self.canny_low, self.canny_high)
            paper = 1.0 - lines
        return gray_to_video(1.0 - paper if self.invert else paper)

    def reset(self) -> None:
        """Nothing to forget: every frame is independent."""
