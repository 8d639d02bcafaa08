"""Drawing poses the way VACE's pose task does: OpenPose-18 body (+ 68 face dots) on black.

VACE (ali-vilab/VACE vace/annotators/pose.py, dwpose/util.py): COCO keypoints become OpenPose-18 (a neck is added
between the shoulders); the frame is resized so its short side is 1024 (sides rounded to multiples of 64); each of
the first 17 limbs is a filled ellipse (semi-axes: half the limb length and 4 px) in its colour; the canvas is
scaled by 0.6; each joint is a filled circle of radius 4; face landmarks are white dots of radius 3; joints with a
score <= 0.3 are left out; the drawing is resized back to the frame (INTER_AREA when shrinking).

Colour order (a documented choice): VACE feeds the detector a BGR frame and flips the drawing's channels on return,
so its pose frames have R and B swapped relative to the OpenPose / comfyui_controlnet_aux palette below: the
neck -> right-shoulder limb is blue in VACE's frames, red in controlnet_aux's. color_order="vace" (default)
reproduces VACE's training frames; "openpose" keeps the palette as listed.
"""

import math

import cv2
import numpy as np

COLOR_ORDERS = ("vace", "openpose")
SCORE_THRESHOLD = 0.3
STICK_WIDTH = 4

# OpenPose-18 slot i takes COCO-with-neck keypoint COCO_TO_OPENPOSE[i] (index 17 is the neck).
COCO_TO_OPENPOSE = (0, 17, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
# Limbs as pairs of OpenPose-18 joints (0-based); only the first 17 are drawn, as in OpenPose / VACE.
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
          (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
          (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
DIMMED_COLORS = tuple(tuple(int(c * 0.6) for c in color) for color in COLORS)  # VACE's limbs: x0.6, truncated
FACE_SLICE = slice(23, 91)  # the 68 face landmarks of COCO-WholeBody's 133 keypoints


def coco_to_openpose(keypoints: np.ndarray, scores: np.ndarray) -> tuple:
    """COCO-17 keypoints [P, 17, 2] + scores [P, 17] -> OpenPose-18 [P, 18, 2] + [P, 18] (neck added).

    The neck is the shoulders' midpoint; like VACE/DWPose its score is 1 when both shoulders score > 0.3, else 0.
    """
    neck = keypoints[:, [5, 6]].mean(axis=1, keepdims=True)
    neck_score = ((scores[:, 5] > SCORE_THRESHOLD) & (scores[:, 6] > SCORE_THRESHOLD)).astype(scores.dtype)[:, None]
    with_neck = np.concatenate([keypoints[:, :17], neck], axis=1)
    with_neck_scores = np.concatenate([scores[:, :17], neck_score], axis=1)
    order = list(COCO_TO_OPENPOSE)
    return with_neck[:, order], with_neck_scores[:, order]


def vace_canvas_size(height: int, width: int, resolution: int = 1024) -> tuple:
    """The (height, width) VACE draws poses at: short side scaled to `resolution`, sides rounded to 64."""
    scale = resolution / min(height, width)
    return max(64, int(np.round(height * scale / 64.0)) * 64), max(64, int(np.round(width * scale / 64.0)) * 64)


def draw_body(canvas: np.ndarray, points: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Draw OpenPose-18 bodies (normalised [P, 18, 2] coordinates) on a black uint8 canvas; returns the canvas.

    VACE dims the limbs by drawing them, then scaling the canvas by 0.6 (truncated); on black that equals drawing
    them in the dimmed colours directly, which skips two passes over the canvas.
    """
    height, width = canvas.shape[:2]
    visible = scores > SCORE_THRESHOLD
    for limb, (a, b) in enumerate(LIMBS):
        for person in range(len(points)):
            if not (visible[person, a] and visible[person, b]):
                continue
            xs = points[person, [a, b], 0] * float(width)
            ys = points[person, [a, b], 1] * float(height)
            length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
            polygon = cv2.ellipse2Poly((int(np.mean(xs)), int(np.mean(ys))), (int(length / 2), STICK_WIDTH),
                                       int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, DIMMED_COLORS[limb])
    for joint in range(18):
        for person in range(len(points)):
            if visible[person, joint]:
                x, y = points[person, joint]
                cv2.circle(canvas, (int(x * width), int(y * height)), 4, COLORS[joint], thickness=-1)
    return canvas


def draw_face(canvas: np.ndarray, points: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Draw face landmarks (normalised [P, 68, 2]) as white dots of radius 3."""
    height, width = canvas.shape[:2]
    for person in range(len(points)):
        for (x, y), score in zip(points[person], scores[person]):
            px, py = int(x * width), int(y * height)
            if score >= SCORE_THRESHOLD and px > 0.01 and py > 0.01:  # VACE moves points scoring < 0.3 to -1
                cv2.circle(canvas, (px, py), 3, (255, 255, 255), thickness=-1)
    return canvas


def render_pose_frame(height: int, width: int, body: np.ndarray, body_scores: np.ndarray, face: np.ndarray = None,
                      face_scores: np.ndarray = None, color_order: str = "vace", resolution: int = 1024) -> np.ndarray:
    """One pose frame, uint8 [H, W, 3] RGB, from OpenPose-18 bodies in frame pixels ([P, 18, 2], scores [P, 18]).

    face / face_scores: optional [P, 68, 2] / [P, 68]. resolution: VACE's drawing short side (0: draw at frame size).
    """
    if color_order not in COLOR_ORDERS:
        raise ValueError(f"pose color_order must be one of {COLOR_ORDERS}, got {color_order!r}")
    canvas_h, canvas_w = vace_canvas_size(height, width, resolution) if resolution > 0 else (height, width)
    scale = np.array([width, height], dtype=np.float64)
    canvas = draw_body(np.zeros((canvas_h, canvas_w, 3), np.uint8), body / scale, body_scores)
    if face is not None and len(face):
        canvas = draw_face(canvas, face / scale, face_scores)
    if color_order == "vace":
        canvas = canvas[..., ::-1]
    if (canvas_h, canvas_w) != (height, width):
        shrink = height * width < canvas_h * canvas_w
        canvas = cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LANCZOS4)
    return np.ascontiguousarray(canvas)
