"""Farnebäck optical flow on CPU worker threads and the backward warp that moves a frame along it.

The Temporal-LLLite condition is the previous stylized frame warped onto the current input: flow is
computed on the *inputs* (previous input -> current input, grayscale) with the parameters the released
adapter was trained with (dreamlite-stream flow.py), and the previous output is sampled at
(x - flow_x, y - flow_y), bilinear, border replicated (the training data's cv2.remap).
"""

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# Farnebäck settings of the DreamLite streaming work (otanl/dreamlite-stream) and OpenCV's samples; one place for
# both users: the flow annotator and the Temporal-LLLite condition.
FARNEBACK_PARAMS = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def farneback_flow(previous_gray: np.ndarray, current_gray: np.ndarray) -> np.ndarray:
    """Dense flow from the previous to the current grayscale uint8 HxW frame: float32 HxWx2 (dx, dy)."""
    flow = cv2.calcOpticalFlowFarneback(previous_gray, current_gray, None, **FARNEBACK_PARAMS)
    return flow.astype(np.float32, copy=False)


def gray_uint8(frame: np.ndarray) -> np.ndarray:
    """An RGB frame HxWx3 (float in [0,1] or uint8) as a grayscale uint8 HxW image."""
    if frame.dtype != np.uint8:
        frame = np.clip(frame * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


def warp_backward(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample `image` [B or 1, C, H, W] at (x - dx, y - dy) for each flow [B, H, W, 2] -> [B, C, H, W].

    Bilinear with replicated borders, like cv2.remap(INTER_LINEAR, BORDER_REPLICATE).
    """
    batch, height, width, _ = flow.shape
    ys = torch.arange(height, device=flow.device, dtype=torch.float32).view(1, height, 1)
    xs = torch.arange(width, device=flow.device, dtype=torch.float32).view(1, 1, width)
    flow = flow.float()  # float32 throughout: bf16 coordinates would land pixels off at 512 px
    # align_corners=True maps pixel centres 0..W-1 onto -1..1 exactly, so no half-pixel shift creeps in
    grid_x = (xs - flow[..., 0]) * (2.0 / max(width - 1, 1)) - 1.0
    grid_y = (ys - flow[..., 1]) * (2.0 / max(height - 1, 1)) - 1.0
    grid = torch.stack((grid_x, grid_y), dim=-1)
    warped = F.grid_sample(image.float().expand(batch, -1, -1, -1), grid, mode="bilinear",
                           padding_mode="border", align_corners=True)
    return warped.to(image.dtype)


def _flow_to(previous_gray: np.ndarray, frame: np.ndarray) -> np.ndarray:
    return farneback_flow(previous_gray, gray_uint8(frame))


class FlowWorkers:
    """A small thread pool for Farnebäck flow; OpenCV releases the GIL, so flows overlap GPU work."""

    def __init__(self, workers: int = 8):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="streamvace-flow")

    def flows_from(self, previous_gray: np.ndarray, frames: np.ndarray) -> list:
        """Start one flow per RGB frame of [B, H, W, 3], each from `previous_gray`; returns futures."""
        return [self._pool.submit(_flow_to, previous_gray, frame) for frame in frames]

    def close(self) -> None:
        """Stop the worker threads (pending flows still finish)."""
        self._pool.shutdown(wait=True)


def wait_flows(futures: list) -> np.ndarray:
    """Wait for flow futures and stack them into [B, H, W, 2] float32."""
    return np.stack([future.result() for future in futures])
