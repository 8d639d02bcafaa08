"""VACE's pose frames drawn on the GPU: the picture of annotators/pose_render.py (OpenCV on CPU threads, the exact
reference), batched over the chunk and every person, with no host sync.

Every primitive VACE draws is one solid colour without blending, so a canvas pixel shows the last primitive that
covers it. Each primitive gets a key in drawing order (limbs limb-major then person, joints joint-major then
person, face dots last), the canvas keeps the largest key covering each pixel (scatter_reduce "amax"), a palette
turns keys into colours (limb colours carry VACE's x0.6 dimming, truncated as numpy's astype truncates), and the
canvas is area-averaged down to the frame as cv2.INTER_AREA does (fractional pixel overlaps, rounded to 8 bits).

- Joints (radius 4) and face dots (radius 3) use cv2.circle's own pixel pattern at the same integer centres: exact.
- Limbs: VACE fills cv2.ellipse2Poly's 361-gon (integer vertices, 8-connected edges). Here a pixel is inside when
  its centre lies in the true ellipse grown by half a pixel along the axis nearest the outline's normal (what the
  edges' 8-connected pixels add). The polygon's vertex rounding moves its outline by up to half a pixel, so about
  3 % of a limb's canvas pixels, all on its outline, differ from OpenCV's.
- A limb's candidate pixels are 15 pixels across its axis in every canvas column it spans (every row for steep
  limbs): a static number per limb, so the work does not depend on the poses.

Measured against the OpenCV renderer (tests/test_annotators_pose_raster.py): on VACE's fixture and on 8 people at
480x832, 99.7 % of the output pixels are equal (99 % asserted) and the others lie on limb outlines, where the
area average saw a partly different outline pixel; at drawing size (no resizing) joints and face dots are exact
and under 5 % of the limb pixels differ. Frames larger than the drawing canvas (short side > 1024) are
enlarged bicubically instead of with Lanczos-4.
"""

import functools
import math

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from .frames import device_constant
from .pose_render import (COCO_TO_OPENPOSE, COLOR_ORDERS, COLORS, DIMMED_COLORS, FACE_SLICE, LIMBS, SCORE_THRESHOLD,
                          STICK_WIDTH, vace_canvas_size)

CROSS_PIXELS = 15  # >= 2 * (4.5 * sqrt(2) + 0.5) + 1: a limb's widest chord across its stepping axis, grown
CANDIDATE_BUDGET = 1 << 23  # limb candidate pixels per batch, to bound memory (~0.5 GB of temporaries)


@functools.lru_cache(maxsize=64)
def device_index(values: tuple, device) -> torch.Tensor:
    """A small int64 constant on `device`, copied there once."""
    return torch.tensor(values, dtype=torch.int64).to(device)


@functools.lru_cache(maxsize=None)
def circle_offsets(radius: int) -> tuple:
    """(dy, dx) offsets of the pixels cv2.circle(thickness=-1) fills around an integer centre, as a tuple of pairs."""
    size = 2 * radius + 3
    disc = cv2.circle(np.zeros((size, size), np.uint8), (radius + 1, radius + 1), radius, 1, thickness=-1)
    return tuple(map(tuple, (np.argwhere(disc > 0) - (radius + 1)).tolist()))


def openpose_bodies(keypoints: torch.Tensor, scores: torch.Tensor) -> tuple:
    """COCO-17 keypoints [..., 17, 2] + scores [..., 17] -> OpenPose-18 (neck added), as pose_render does."""
    neck = (keypoints[..., 5, :] + keypoints[..., 6, :]) / 2
    neck_score = ((scores[..., 5] > SCORE_THRESHOLD) & (scores[..., 6] > SCORE_THRESHOLD)).to(scores.dtype)
    order = device_index(COCO_TO_OPENPOSE, keypoints.device)
    return (torch.cat([keypoints[..., :17, :], neck[..., None, :]], -2).index_select(-2, order),
            torch.cat([scores[..., :17], neck_score[..., None]], -1).index_select(-1, order))


def palette(people: int, color_order: str, device) -> torch.Tensor:
    """Key -> RGB (0..255) for `people` people per frame: background, limbs (dimmed), joints, face dots."""
    limbs = [list(DIMMED_COLORS[limb]) for limb in range(len(LIMBS)) for _ in range(people)]
    joints = [list(COLORS[joint]) for joint in range(18) for _ in range(people)]
    colours = np.array([[0, 0, 0]] + limbs + joints + [[255, 255, 255]], dtype=np.float32)
    if color_order == "vace":
        colours = colours[:, ::-1]
    return device_constant(tuple(colours.ravel().tolist()), device, (-1, 3))


def _scatter_keys(canvas: torch.Tensor, frame: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor,
                  keys: torch.Tensor, valid: torch.Tensor) -> None:
    """Write keys at (frame, y, x) into the flat canvas [T*H*W + 1] (largest key wins); invalid pixels go nowhere."""
    height, width = canvas.shape[1:]
    valid = valid & (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
    index = (frame * height + ys.clamp(0, height - 1)) * width + xs.clamp(0, width - 1)
    flat = canvas.view(-1)
    dump = flat.numel() - 1
    flat.scatter_reduce_(0, torch.where(valid, index, dump).reshape(-1),
                         torch.where(valid, keys, 0).to(flat.dtype).reshape(-1), "amax")


def _draw_circles(canvas, centres_x, centres_y, keys, valid, radius):
    """Filled circles at integer centres [T, N]; canvas is [T + 1 (dump), H, W] viewed flat."""
    offsets = device_index(circle_offsets(radius), centres_x.device)
    frame = torch.arange(centres_x.shape[0], device=centres_x.device).view(-1, 1, 1)
    ys = centres_y[..., None] + offsets[:, 0]
    xs = centres_x[..., None] + offsets[:, 1]
    _scatter_keys(canvas, frame, ys, xs, keys[..., None].expand_as(ys), valid[..., None].expand_as(ys))


def _draw_limbs(canvas, centre_x, centre_y, semi_major, angle, keys, valid):
    """Filled ellipses (VACE's limbs): integer centres, semi-axes (semi_major, 4), angles in degrees, all [T, E]."""
    device = centre_x.device
    frames, count = centre_x.shape
    steps = max(canvas.shape[1:]) + 2
    centre_x, centre_y = centre_x.float(), centre_y.float()  # integers: exact in float32
    radians = torch.deg2rad(angle.float())
    cos, sin = torch.cos(radians), torch.sin(radians)
    a2, b2 = semi_major.float().clamp(min=0.01) ** 2, float(STICK_WIDTH) ** 2
    # the ellipse as a quadratic form q_xx dx^2 + 2 q_xy dx dy + q_yy dy^2 <= 1
    q_xx, q_yy, q_xy = cos * cos / a2 + sin * sin / b2, sin * sin / a2 + cos * cos / b2, cos * sin * (1 / a2 - 1 / b2)
    steep = sin.abs() > cos.abs()  # steep limbs are walked row by row, the others column by column
    extent = torch.sqrt(torch.where(steep, a2 * sin * sin + b2 * cos * cos, a2 * cos * cos + b2 * sin * sin))
    centre_p = torch.where(steep, centre_y, centre_x)  # along the walk
    centre_q = torch.where(steep, centre_x, centre_y)  # across it
    chord_slope = torch.where(steep, -q_xy / q_xx, -q_xy / q_yy)  # where each row's / column's chord is centred
    # walk from the limb's first row / column on the canvas (a limb may reach far outside it)
    start, end = torch.floor(centre_p - extent - 1).clamp(min=-1), centre_p + extent + 2
    frame_index = torch.arange(frames, device=device).view(frames, 1, 1, 1)
    step = torch.arange(steps, device=device, dtype=torch.float32).view(1, 1, -1, 1)
    across = torch.arange(CROSS_PIXELS, device=device, dtype=torch.float32) - CROSS_PIXELS // 2
    per_batch = max(1, CANDIDATE_BUDGET // (frames * steps * CROSS_PIXELS))
    for first in range(0, count, per_batch):
        def part(values):
            return values[:, first:first + per_batch, None, None]

        p = part(start) + step
        q = torch.round(part(centre_q) + part(chord_slope) * (p - part(centre_p))) + across
        xs, ys = torch.where(part(steep), q, p), torch.where(part(steep), p, q)
        dx, dy = xs - part(centre_x), ys - part(centre_y)
        c, s, a2_part = part(cos), part(sin), part(a2)
        u, v = dx * c + dy * s, dy * c - dx * s  # along and across the limb
        radius = torch.sqrt(u * u / a2_part + v * v / b2).clamp(min=1e-6)
        grad_u, grad_v = u / a2_part / radius, v / b2 / radius
        grad_x, grad_y = grad_u * c - grad_v * s, grad_u * s + grad_v * c
        # OpenCV's 8-connected outline adds half a pixel along the axis nearest the normal (an L1 ball of radius 1/2)
        inside = radius - 1 <= 0.5 * torch.maximum(grad_x.abs(), grad_y.abs())
        inside = inside & (p < part(end)) & part(valid)
        _scatter_keys(canvas, frame_index, ys.long(), xs.long(), part(keys).expand_as(xs), inside)


@functools.lru_cache(maxsize=32)
def _area_taps(size_in: int, size_out: int, device) -> tuple:
    """INTER_AREA as taps: for each output pixel, input indices [out, K] and overlap weights [out, K]."""
    scale = size_in / size_out
    taps = int(math.ceil(scale)) + 1
    index, weight = np.zeros((size_out, taps), np.int64), np.zeros((size_out, taps), np.float32)
    for out in range(size_out):
        low, high = out * scale, min((out + 1) * scale, size_in)
        first = int(math.floor(low))
        for k, pixel in enumerate(range(first, min(first + taps, size_in))):
            index[out, k] = pixel
            weight[out, k] = max(0.0, min(high, pixel + 1) - max(low, pixel)) / (high - low)
    return torch.from_numpy(index).to(device), torch.from_numpy(weight).to(device)


def area_resize(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """8-bit values [B, C, h, w] (float) -> [B, C, height, width] shrunk and rounded as cv2.INTER_AREA does uint8."""
    halving = images.shape[-2:] == (2 * height, 2 * width)
    for dim, size in ((3, width), (2, height)):
        index, weight = _area_taps(images.shape[dim], size, images.device)
        shape = [1, 1, 1, 1]
        shape[dim] = size
        total = 0
        for k in range(index.shape[1]):
            total = total + images.index_select(dim, index[:, k]) * weight[:, k].view(shape)
        images = total
    # OpenCV's integer path for exactly 2x rounds halves up; its float path rounds them to even
    return torch.floor(images + 0.5) if halving else images.round()


def to_canvas(points: torch.Tensor, height: int, width: int, canvas_h: int, canvas_w: int) -> torch.Tensor:
    """Frame pixels [..., 2] -> canvas pixels in float64, in pose_render's order (normalise, then scale)."""
    points = points.double()
    return torch.stack([points[..., 0] / width * canvas_w, points[..., 1] / height * canvas_h], -1)


def render_pose_frames(keypoints: torch.Tensor, scores: torch.Tensor, present: torch.Tensor, height: int,
                       width: int, draw_face: bool = True, color_order: str = "vace",
                       resolution: int = 1024) -> torch.Tensor:
    """Keypoints [T, K, J, 2] (frame pixels; J = 17 COCO or 133 whole-body), scores [T, K, J], people present
    [T, K] (bool) -> pose frames [T, 3, height, width] in [0, 1] on the keypoints' device, as VACE draws them."""
    if color_order not in COLOR_ORDERS:
        raise ValueError(f"pose color_order must be one of {COLOR_ORDERS}, got {color_order!r}")
    device = keypoints.device
    frames, people = keypoints.shape[:2]
    canvas_h, canvas_w = vace_canvas_size(height, width, resolution) if resolution > 0 else (height, width)
    body, body_scores = openpose_bodies(keypoints[..., :17, :].float(), scores[..., :17].float())
    points = to_canvas(body, height, width, canvas_h, canvas_w)
    visible = (body_scores > SCORE_THRESHOLD) & present[..., None]
    canvas = torch.zeros(frames + 1, canvas_h, canvas_w, dtype=torch.int32, device=device)  # last frame: dump

    starts, ends = (device_index(tuple(limb[i] for limb in LIMBS), device) for i in (0, 1))
    a, b = points.index_select(2, starts), points.index_select(2, ends)  # [T, K, 17, 2]
    delta = a - b
    length = torch.sqrt((delta * delta).sum(-1))
    angle = torch.trunc(torch.rad2deg(torch.atan2(delta[..., 1], delta[..., 0])))
    centre = torch.trunc((a + b) / 2)
    limb_keys = 1 + torch.arange(len(LIMBS), device=device) * people + torch.arange(people, device=device)[:, None]
    limb_valid = visible.index_select(2, starts) & visible.index_select(2, ends)
    flat = lambda x: x.transpose(1, 2).reshape(frames, -1)  # noqa: E731  [T, K, L] -> [T, L*K], keys in order
    _draw_limbs(canvas, flat(centre[..., 0]), flat(centre[..., 1]), flat(torch.trunc(length / 2)), flat(angle),
                flat(limb_keys.expand(frames, -1, -1)), flat(limb_valid))

    joints = torch.trunc(points).long()
    joint_keys = 1 + people * len(LIMBS) + torch.arange(18, device=device) * people + \
        torch.arange(people, device=device)[:, None]
    _draw_circles(canvas, joints[..., 0].reshape(frames, -1), joints[..., 1].reshape(frames, -1),
                  joint_keys.expand(frames, -1, -1).reshape(frames, -1), visible.reshape(frames, -1), 4)

    if draw_face and keypoints.shape[2] == 133:
        face = torch.trunc(to_canvas(keypoints[..., FACE_SLICE, :], height, width, canvas_h, canvas_w)).long()
        face_valid = (scores[..., FACE_SLICE] >= SCORE_THRESHOLD) & present[..., None] & (face > 0).all(-1)
        face_key = torch.full_like(face[..., 0], 1 + people * (len(LIMBS) + 18))
        _draw_circles(canvas, face[..., 0].reshape(frames, -1), face[..., 1].reshape(frames, -1),
                      face_key.reshape(frames, -1), face_valid.reshape(frames, -1), 3)

    colours = palette(people, color_order, device)[canvas[:frames].long()].permute(0, 3, 1, 2)
    if (canvas_h, canvas_w) == (height, width):
        return colours / 255.0
    if height * width < canvas_h * canvas_w:
        return area_resize(colours, height, width) / 255.0
    resized = F.interpolate(colours, size=(height, width), mode="bicubic", align_corners=False)
    return resized.round().clamp(0, 255) / 255.0
