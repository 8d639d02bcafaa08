"""Temporal-consistency metrics for a stylized clip, with the spatial probes that keep them honest.

Warping error alone rewards blur: a smoother (or frozen) output warps onto itself better (seed 003, §III-D
and §V). So it is reported with two sharpness probes, the mean Sobel gradient and the high-frequency FFT
energy; a "better" warping error that comes with a lower Sobel / HF energy is smoothing, not consistency.

Definitions (all on 0..255 grayscale / RGB values, one clip):
* warping error: mean over t >= 1 of mean |out_t - warp(out_{t-1})|, where warp samples the previous output
  at (x - f) with f the Farnebäck flow from input_{t-1} to input_t (the stylize node's own warp); every
  pixel counts (no occlusion mask), so compare configurations on the same clip only.
* sobel: mean over frames of the mean Sobel gradient magnitude of the grayscale frame.
* hf_energy: mean over frames of the mean orthonormal FFT magnitude of the grayscale frame outside a
  centred disc whose radius is 1/4 of the half-size of the smaller axis.
"""

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..flow_warp import farneback_flow, gray_uint8, warp_backward


@dataclass
class FlickerReport:
    """Warping error of the output and of the input (the flicker floor), and the sharpness probes."""

    warping_error: float
    input_warping_error: float
    sobel: float
    hf_energy: float

    def summary(self) -> str:
        """One line for the UI."""
        return (f"warping error {self.warping_error:.2f} (input {self.input_warping_error:.2f}), "
                f"sobel {self.sobel:.2f}, HF-FFT {self.hf_energy:.2f}")


def _uint8(frames: np.ndarray) -> np.ndarray:
    return frames if frames.dtype == np.uint8 else np.clip(frames * 255.0 + 0.5, 0, 255).astype(np.uint8)


def warping_error(outputs: np.ndarray, inputs: np.ndarray) -> float:
    """Mean |out_t - warp(out_{t-1})| on 0..255, flow from the inputs (both [T, H, W, 3], float 0..1 or uint8)."""
    if outputs.shape != inputs.shape:
        raise ValueError(f"stylized frames {outputs.shape} and source frames {inputs.shape} must have the same "
                         "shape; give the metric the frames the stylizer actually saw (same size and count)")
    if len(outputs) < 2:
        raise ValueError("warping error needs at least two frames")
    outputs = _uint8(outputs).astype(np.float32)
    grays = [gray_uint8(frame) for frame in _uint8(inputs)]
    errors = []
    for t in range(1, len(outputs)):
        flow = torch.from_numpy(farneback_flow(grays[t - 1], grays[t]))[None]
        previous = torch.from_numpy(outputs[t - 1]).permute(2, 0, 1)[None]
        warped = warp_backward(previous, flow)[0].permute(1, 2, 0).numpy()
        errors.append(float(np.abs(outputs[t] - warped).mean()))
    return float(np.mean(errors))


def sobel_sharpness(frames: np.ndarray) -> float:
    """Mean Sobel gradient magnitude of the grayscale frames (0..255 scale)."""
    values = []
    for frame in _uint8(frames):
        gray = gray_uint8(frame).astype(np.float32)
        gx, gy = cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1)
        values.append(float(np.sqrt(gx * gx + gy * gy).mean()))
    return float(np.mean(values))


def high_frequency_energy(frames: np.ndarray, radius_fraction: float = 0.25) -> float:
    """Mean orthonormal FFT magnitude outside a centred low-frequency disc, grayscale 0..255."""
    values = []
    for frame in _uint8(frames):
        gray = gray_uint8(frame).astype(np.float32)
        spectrum = np.abs(np.fft.fftshift(np.fft.fft2(gray, norm="ortho")))
        height, width = gray.shape
        ys, xs = np.ogrid[:height, :width]
        radius = radius_fraction * min(height, width) / 2.0
        outside = (ys - height / 2.0) ** 2 + (xs - width / 2.0) ** 2 > radius ** 2
        values.append(float(spectrum[outside].mean()))
    return float(np.mean(values))


def flicker_report(outputs: np.ndarray, inputs: np.ndarray) -> FlickerReport:
    """All metrics for stylized `outputs` and their source `inputs` ([T, H, W, 3] each)."""
    return FlickerReport(warping_error(outputs, inputs), warping_error(inputs, inputs),
                         sobel_sharpness(outputs), high_frequency_energy(outputs))
