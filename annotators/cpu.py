"""OpenCV work on CPU threads: one frame per task (OpenCV releases the GIL), one transfer per chunk."""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

_POOL = None


def cpu_pool() -> ThreadPoolExecutor:
    """The process-wide thread pool for per-frame OpenCV work (one worker per CPU core)."""
    global _POOL
    if _POOL is None:  # OpenCV's own thread setting is left alone: it is process-wide, other nodes use it too
        _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 4, thread_name_prefix="streamvace-cv")
    return _POOL


def map_frames(function, *frame_lists) -> list:
    """function(*frames_i) for every i, run on the thread pool, results in order."""
    return list(cpu_pool().map(function, *frame_lists))


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """[T, C, H, W] in [0, 1] (any device) -> uint8 numpy [T, H, W, C] on the CPU (one copy for the chunk)."""
    return (images.clamp(0, 1) * 255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def uint8_to_images(frames: np.ndarray, device) -> torch.Tensor:
    """uint8 numpy [T, H, W, C] -> [T, C, H, W] float in [0, 1] on `device`."""
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).to(device, non_blocking=True)
    return tensor.permute(0, 3, 1, 2).float() / 255.0
