"""Optical-flow control frames, rendered with the Middlebury colour wheel as VACE's flow task does.

VACE's FlowVisAnnotator runs RAFT between consecutive frames, renders each flow with RAFT's `flow_to_image`
(normalised by that frame's largest motion) and duplicates the first rendering so N frames give N outputs.
Here the flow comes from OpenCV's Farnebäck by default (weight-free, CPU threads) or from torchvision's RAFT when
its weights are present. The stream carries the last frame of each chunk, so frame 0 of a chunk gets the flow from
the previous chunk's last frame and chunked annotation equals whole-clip annotation.
"""

import numpy as np
import torch

from ..models.flow_warp import farneback_flow
from .cpu import map_frames
from .frames import device_constant, from_images, to_images

METHODS = ("farneback", "raft")


def _color_wheel() -> torch.Tensor:
    """The 55-colour Middlebury wheel [55, 3] in 0..255 (Baker et al. 2007; RAFT's make_colorwheel)."""
    segments = ((15, (255, "up", 0)), (6, ("down", 255, 0)), (4, (0, 255, "up")),
                (11, (0, "down", 255)), (13, ("up", 0, 255)), (6, (255, 0, "down")))
    rows = []
    for length, pattern in segments:
        ramp = np.floor(255 * np.arange(length) / length)
        rows.append(np.stack([ramp if c == "up" else 255 - ramp if c == "down" else np.full(length, c)
                              for c in pattern], axis=1))
    return tuple(np.concatenate(rows).flatten().tolist())


_WHEEL = _color_wheel()  # flat tuple of 55 * 3 values (hashable, so device copies are cached)


def flow_to_color(flow: torch.Tensor, max_flow: float = 0.0) -> torch.Tensor:
    """Flow [T, 2, H, W] (pixels) -> colour images [T, 3, H, W] in [0, 1], exactly as RAFT's flow_to_image.

    max_flow 0 normalises each frame by its own largest motion (VACE); > 0 uses that fixed motion in pixels
    (no flicker between frames; larger motion is drawn dimmed, as the wheel marks out-of-range flow).
    """
    flow = flow.float()
    radius = flow.norm(dim=1, keepdim=True)
    scale = radius.amax(dim=(2, 3), keepdim=True) if max_flow <= 0 else torch.full_like(radius[:, :, :1, :1], max_flow)
    uv = flow / (scale + 1e-5)
    u, v = uv[:, :1], uv[:, 1:]
    radius = uv.norm(dim=1, keepdim=True)
    wheel = device_constant(_WHEEL, flow.device, (-1, 3))
    columns = wheel.shape[0]
    position = (torch.atan2(-v, -u) / torch.pi + 1) / 2 * (columns - 1)
    k0 = position.floor().long()
    fraction = position - k0
    k1 = torch.where(k0 + 1 == columns, 0, k0 + 1)
    low, high = wheel[k0[:, 0]].permute(0, 3, 1, 2) / 255, wheel[k1[:, 0]].permute(0, 3, 1, 2) / 255
    color = (1 - fraction) * low + fraction * high
    color = torch.where(radius <= 1, 1 - radius * (1 - color), color * 0.75)
    return torch.floor(255 * color) / 255


def _rgb_to_gray_uint8(images: torch.Tensor) -> np.ndarray:
    weights = device_constant((0.299, 0.587, 0.114), images.device)
    gray = torch.einsum("tchw,c->thw", images, weights)
    return (gray * 255).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()


class RaftFlow:
    """torchvision's RAFT (raft_large / raft_small) with weights from a local file; batched over frame pairs."""

    def __init__(self, weights_path: str, device="cpu", iterations: int = 20):
        try:
            from torchvision.models.optical_flow import raft_large, raft_small
        except ImportError as error:
            raise ImportError(
                "RAFT flow needs torchvision, which is not installed. Install the torchvision build that matches "
                "your torch (pip install torchvision), or use the weight-free 'farneback' flow.") from error
        from ..models.checkpoint_io import CheckpointError, key_summary, read_checkpoint

        state = read_checkpoint(weights_path)
        small = "update_block.motion_encoder.convcorr2.0.weight" not in state  # raft_small has one corr conv
        model = (raft_small if small else raft_large)(weights=None, progress=False)
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise CheckpointError(
                f"{weights_path}: not a torchvision RAFT checkpoint (keys: {key_summary(state)}). Use torchvision's "
                "raft_large_C_T_SKHT_V2-ff5fadd5.pth or raft_small_C_T_V2-01064c6d.pth; the original RAFT "
                "repository's raft-things.pth has other key names.") from error
        self.model = model.eval().requires_grad_(False).to(device)
        self.iterations = iterations

    @torch.inference_mode()
    def __call__(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """Flow [T, 2, H, W] from images [T, 3, H, W] in [0, 1] to the next ones."""
        height, width = previous.shape[-2:]
        pad = (0, (-width) % 8, 0, (-height) % 8)
        a = torch.nn.functional.pad(previous * 2 - 1, pad, mode="replicate")
        b = torch.nn.functional.pad(current * 2 - 1, pad, mode="replicate")
        parameter = next(self.model.parameters())
        flows = self.model(a.to(parameter), b.to(parameter), num_flow_updates=self.iterations)
        return flows[-1][..., :height, :width].float()


class FlowAnnotator:
    """RGB frames -> flow-colour frames; carries the last frame between chunks."""

    def __init__(self, method: str = "farneback", raft: RaftFlow = None, max_flow: float = 0.0):
        if method not in METHODS:
            raise ValueError(f"flow method must be one of {METHODS}, got {method!r}")
        if method == "raft" and raft is None:
            raise ValueError("flow method 'raft' needs a RaftFlow model (torchvision + a RAFT weight file)")
        self.method, self.raft, self.max_flow = method, raft, max_flow
        self.previous = None  # the last frame seen: gray uint8 [H, W] (Farnebäck) or image [3, H, W] (RAFT)

    def reset(self) -> None:
        """Forget the previous frame: the next chunk starts a new clip."""
        self.previous = None

    def flow(self, video: torch.Tensor) -> torch.Tensor:
        """Flow [T, 2, H, W] in pixels for each frame of the chunk (from the previous frame); updates the state."""
        images = to_images(video)
        frames = _rgb_to_gray_uint8(images) if self.method == "farneback" else images
        previous = self.previous
        if previous is not None and previous.shape[-2:] != frames.shape[-2:]:
            raise ValueError(f"frame size changed from {tuple(previous.shape[-2:])} to {tuple(frames.shape[-2:])} "
                             "inside a flow stream; reset the stream when the video changes")
        if len(frames) == 1 and previous is None:
            flows = torch.zeros(1, 2, *images.shape[-2:], device=images.device)
        else:
            if self.method == "farneback":
                firsts = ([previous] if previous is not None else []) + list(frames[:-1])
                seconds = list(frames) if previous is not None else list(frames[1:])
                flows = torch.from_numpy(np.stack(map_frames(farneback_flow, firsts, seconds)))
                flows = flows.to(images.device).permute(0, 3, 1, 2)
            else:
                starts = frames[:-1] if previous is None else torch.cat([previous[None], frames[:-1]])
                ends = frames[1:] if previous is None else frames
                flows = self.raft(starts, ends)
            if previous is None:  # VACE repeats the first flow for frame 0, which has no predecessor
                flows = torch.cat([flows[:1], flows])
        self.previous = frames[-1].copy() if isinstance(frames, np.ndarray) else frames[-1].clone()
        return flows

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        """[3, T, H, W] in [-1, 1] -> flow colour [3, T, H, W] in [-1, 1]."""
        return from_images(flow_to_color(self.flow(video), self.max_flow))
