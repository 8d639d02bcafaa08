"""Layout / trajectory control frames: boxes or mask outlines on white, as VACE's layout tasks draw them.

VACE's LayoutBboxAnnotator draws a 2-px rectangle (black by default) on a white frame, moving linearly from a start
box to an end box; LayoutMaskAnnotator / LayoutTrackAnnotator draw each mask's outer contour (drawContours
thickness 3) on white (annotators/mask_outline.py). This is the training-free trajectory / drag control: a
trajectory (points drawn in the UI or from a tracker) becomes a box of `box_size` pixels centred on the point.

Layout JSON (pixel coordinates of the output frame):
- one moving box: {"boxes": [[x0, y0, x1, y1], ...keyframes], "color": [r, g, b]} (colour optional, 0..255);
- one trajectory: [{"x": .., "y": ..}, ...] (ComfyUI spline editor / KJNodes points), or
  {"points": [[x, y], ...], "box_size": 64, "color": [r, g, b]};
- several objects: a list of the above, e.g. [[{"x":..,"y":..}, ...], {"boxes": [...]}].
Keyframes are spread evenly over `total_frames` frames (0: one keyframe per frame, as a tracker gives them) and
interpolated linearly; after the last frame an object stays where it ended. The stream carries the frame cursor.
"""

import json

import numpy as np
import torch

from .frames import check_size


class LayoutError(ValueError):
    """A layout JSON that cannot be used; the message says what is wrong and what is expected."""


def _point(item, where):
    if isinstance(item, dict) and "x" in item and "y" in item:
        return float(item["x"]), float(item["y"])
    if isinstance(item, (list, tuple)) and len(item) == 2:
        return float(item[0]), float(item[1])
    raise LayoutError(f"{where}: expected a point {{\"x\": .., \"y\": ..}} or [x, y], got {item!r}")


def _is_point(item) -> bool:
    if isinstance(item, dict):
        return "x" in item and "y" in item
    return isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(v, (int, float)) for v in item)


def _color(value, where):
    if value is None:
        return (0.0, 0.0, 0.0)
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise LayoutError(f"{where}: colour must be [r, g, b] in 0..255, got {value!r}")
    return tuple(min(max(float(c), 0.0), 255.0) / 255.0 for c in value)


def parse_layout(text: str, box_size: float = 64.0) -> list:
    """Layout JSON -> objects [(keyframe boxes float32 [K, 4] as x0 y0 x1 y1, rgb colour in [0, 1])]."""
    try:
        data = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError as error:
        raise LayoutError(f"layout is not valid JSON ({error}); see annotators/layout.py for the format") from error
    if isinstance(data, dict) or (isinstance(data, list) and data and all(map(_is_point, data))):
        data = [data]  # one object: a box track, or a single trajectory of points
    if not isinstance(data, list) or not data:
        raise LayoutError("layout JSON is empty: give at least one box track or trajectory")
    objects = []
    for index, item in enumerate(data):
        where = f"layout object {index}"
        if isinstance(item, dict) and "boxes" in item:
            boxes = np.asarray(item["boxes"], dtype=np.float32)
            if boxes.ndim == 1:
                boxes = boxes[None]
            if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) == 0:
                raise LayoutError(f"{where}: 'boxes' must be a list of [x0, y0, x1, y1], got {item['boxes']!r}")
            color = item.get("color")
        else:
            points, size, color = item, box_size, None
            if isinstance(item, dict):
                if "points" not in item:
                    raise LayoutError(f"{where}: expected 'boxes' or 'points', got keys {sorted(item)}")
                points, size, color = item["points"], float(item.get("box_size", box_size)), item.get("color")
            if not isinstance(points, list) or not points:
                raise LayoutError(f"{where}: a trajectory needs at least one point, got {points!r}")
            centres = np.array([_point(p, where) for p in points], dtype=np.float32)
            boxes = np.concatenate([centres - size / 2, centres + size / 2], axis=1)
        if not np.isfinite(boxes).all():
            raise LayoutError(f"{where}: coordinates must be finite numbers")
        objects.append((np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])],
                                       axis=1), _color(color, where)))
    return objects


def boxes_at(keyframes: np.ndarray, frame_indices: np.ndarray, total_frames: int = 0) -> np.ndarray:
    """Linearly interpolated boxes [len(frame_indices), 4] of one object at the given frame numbers."""
    count = len(keyframes)
    total = total_frames if total_frames > 0 else count
    if count == 1 or total <= 1:
        return np.repeat(keyframes[:1], len(frame_indices), axis=0)
    position = np.clip(frame_indices, 0, total - 1) * (count - 1) / (total - 1)
    low = np.minimum(np.floor(position).astype(int), count - 2)
    weight = (position - low)[:, None]
    return (1 - weight) * keyframes[low] + weight * keyframes[low + 1]


def draw_box_outlines(boxes: torch.Tensor, colors: torch.Tensor, height: int, width: int,
                      thickness: float = 2.0) -> torch.Tensor:
    """Boxes [T, N, 4] (pixels) and colours [N, 3] -> images [T, 3, H, W] in [0, 1]: outlines on white.

    A pixel is painted when its distance to the box outline is at most thickness / 2, which reproduces
    cv2.rectangle(..., thickness=2) on integer boxes (3-px band, rounded outer corners); later objects on top.
    """
    device = boxes.device
    ys = torch.arange(height, device=device, dtype=torch.float32).view(1, 1, height, 1)
    xs = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, 1, width)
    x0, y0, x1, y1 = (boxes[..., i, None, None].float() for i in range(4))
    outside = torch.hypot((x0 - xs).clamp(min=0) + (xs - x1).clamp(min=0),
                          (y0 - ys).clamp(min=0) + (ys - y1).clamp(min=0))
    inside = torch.minimum(torch.minimum(xs - x0, x1 - xs), torch.minimum(ys - y0, y1 - ys))
    painted = torch.where(outside > 0, outside, inside) <= thickness / 2  # [T, N, H, W]
    canvas = torch.ones(boxes.shape[0], 3, height, width, device=device)
    for index in range(boxes.shape[1]):  # objects, not frames: a handful at most
        canvas = torch.where(painted[:, index, None], colors[index].view(1, 3, 1, 1).to(device), canvas)
    return canvas


class LayoutAnnotator:
    """Renders a layout JSON chunk by chunk; the stream carries the frame cursor."""

    def __init__(self, layout: str, height: int, width: int, total_frames: int = 0, box_size: float = 64.0,
                 thickness: float = 2.0, device="cpu"):
        check_size(height, width, "layout frame size")
        self.objects = parse_layout(layout, box_size)
        self.height, self.width, self.total_frames = int(height), int(width), int(total_frames)
        self.thickness = thickness
        self.device = torch.device(device)
        self.colors = torch.tensor([color for _, color in self.objects], dtype=torch.float32, device=self.device)
        self.cursor = 0

    def reset(self) -> None:
        """Start again at frame 0."""
        self.cursor = 0

    def boxes(self, frames: int) -> np.ndarray:
        """Boxes [frames, N, 4] of the next `frames` frames (does not move the cursor)."""
        indices = np.arange(self.cursor, self.cursor + frames)
        return np.stack([boxes_at(keyframes, indices, self.total_frames) for keyframes, _ in self.objects], axis=1)

    def __call__(self, frames: int) -> torch.Tensor:
        """The next `frames` layout frames [3, frames, H, W] in [-1, 1]; advances the cursor."""
        if int(frames) < 1:
            raise ValueError(f"layout: ask for at least one frame, got {frames}")
        boxes = torch.from_numpy(self.boxes(int(frames))).to(self.device)
        images = draw_box_outlines(boxes, self.colors, self.height, self.width, self.thickness)
        self.cursor += int(frames)
        return (images * 2 - 1).transpose(0, 1)
