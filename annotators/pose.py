"""Pose control frames: a person detector (transformers RT-DETR) + ViTPose (transformers VitPoseForPoseEstimation),
top-down, several people, drawn as VACE's OpenPose-18 body (+ face when the pose model has COCO-WholeBody's 133
keypoints) on black.

Everything runs batched on the model's device for the whole chunk with static shapes: the detector keeps the
`max_people` best person queries per frame, every frame gets that many crops (one ViTPose call for all of them),
and people below `detection_threshold` are simply not drawn. The drawing (`renderer`) runs on the GPU with no host
sync (annotators/pose_raster.py: over 99 % of pixels identical to VACE's OpenCV drawing, the rest on limb edges),
or on CPU threads with OpenCV, exactly as VACE draws (annotators/pose_render.py); "auto" picks the GPU drawing when
the models run on CUDA. Pre/post-processing follows transformers' RT-DETR and ViTPose processors
(640x640 detector input; 1.25-padded boxes warped to 256x192; heatmap argmax + DARK refinement) on the GPU.
Poses carry no state between frames, so chunked annotation equals whole-clip annotation.

`detect_every` > 1 is a streaming approximation that saves detector time: the detector runs on every N-th frame
of a chunk (starting with its first) and the frames in between reuse those person boxes, so a person moving
further than the box's 25 % padding between detections is cropped off-centre or missed; 1 (the default) detects
in every frame.
"""

import numpy as np
import torch
from torch.nn import functional as F

from .cpu import map_frames
from .frames import from_images, normalize_imagenet, to_images
from .pose_raster import render_pose_frames
from .pose_render import COLOR_ORDERS, FACE_SLICE, coco_to_openpose, render_pose_frame
from .weights import load_hf_model

DETECTOR_TYPES = ("rt_detr", "rt_detr_v2")
RENDERERS = ("auto", "torch", "opencv")


def load_pose_model(path: str, device="cpu", dtype=torch.float32):
    """ViTPose / ViTPose++ from a transformers folder (e.g. usyd-community/vitpose-base-simple)."""
    from transformers import VitPoseForPoseEstimation

    model = load_hf_model(VitPoseForPoseEstimation, path, ("vitpose",), "ViTPose",
                          "usyd-community/vitpose-base-simple", device, dtype)
    if model.config.num_labels not in (17, 133):
        raise ValueError(f"{path}: the pose model predicts {model.config.num_labels} keypoints; StreamVACE draws "
                         "COCO (17) or COCO-WholeBody (133) keypoints")
    return model


def load_person_detector(path: str, device="cpu", dtype=torch.float32):
    """RT-DETR (v1/v2) from a transformers folder (e.g. PekingU/rtdetr_r50vd_coco_o365); must know 'person'."""
    from transformers import AutoModelForObjectDetection

    model = load_hf_model(AutoModelForObjectDetection, path, DETECTOR_TYPES, "the person detector",
                          "PekingU/rtdetr_r50vd_coco_o365", device, dtype)
    person_label(model.config)
    return model


def person_label(config) -> int:
    """The class index named 'person' in a detector config (COCO: 0)."""
    for index, name in (getattr(config, "id2label", None) or {}).items():
        if str(name).lower() == "person":
            return int(index)
    raise ValueError("the person detector's config has no 'person' label (id2label); use a COCO-trained RT-DETR")


def detector_inputs(images: torch.Tensor, size: int = 640) -> torch.Tensor:
    """Images [T, 3, H, W] in [0, 1] -> RT-DETR pixel values [T, 3, size, size] (bilinear, no normalisation)."""
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def persons_from_outputs(logits: torch.Tensor, pred_boxes: torch.Tensor, label: int, height: int, width: int,
                         max_people: int) -> tuple:
    """RT-DETR outputs -> the `max_people` best person boxes [T, K, 4] (x0 y0 x1 y1 pixels) and scores [T, K]."""
    scores = torch.sigmoid(logits[..., label].float())
    scores, index = scores.topk(min(max_people, scores.shape[1]), dim=1)
    cx, cy, w, h = pred_boxes.float().gather(1, index[..., None].expand(-1, -1, 4)).unbind(-1)
    boxes = torch.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], -1)
    return boxes, scores


def box_center_scale(boxes: torch.Tensor, crop_height: int = 256, crop_width: int = 192, padding: float = 1.25):
    """Boxes [..., 4] (x0 y0 x1 y1) -> centres [..., 2] and padded sizes [..., 2] (pixels) at the crop's aspect."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    width, height = x1 - x0, y1 - y0
    aspect = crop_width / crop_height
    wider = width > aspect * height
    width, height = torch.where(wider, width, height * aspect), torch.where(wider, width / aspect, height)
    center = torch.stack([x0 + (x1 - x0) * 0.5, y0 + (y1 - y0) * 0.5], dim=-1)
    return center, torch.stack([width, height], dim=-1) * padding


def pose_crops(images: torch.Tensor, boxes: torch.Tensor, crop_height: int = 256, crop_width: int = 192):
    """Crop every box of every frame: images [T, 3, H, W], boxes [T, K, 4] -> crops [T*K, 3, h, w] (normalised).

    Same warp as ViTPose's processor: crop pixel (u, v) samples the frame at center - size/2 + (u, v) * size/(crop-1).
    """
    frames, people = boxes.shape[:2]
    height, width = images.shape[-2:]
    center, size = box_center_scale(boxes.float(), crop_height, crop_width)
    u = torch.arange(crop_width, device=images.device, dtype=torch.float32) / (crop_width - 1)
    v = torch.arange(crop_height, device=images.device, dtype=torch.float32) / (crop_height - 1)
    xs = center[..., 0, None] - size[..., 0, None] / 2 + u * size[..., 0, None]  # [T, K, w]
    ys = center[..., 1, None] - size[..., 1, None] / 2 + v * size[..., 1, None]  # [T, K, h]
    grid = torch.stack(torch.broadcast_tensors((2 * xs / (width - 1) - 1)[..., None, :],
                                               (2 * ys / (height - 1) - 1)[..., :, None]), dim=-1)
    # The K crops of a frame are stacked vertically in one sampling grid, so frames are not copied per person.
    crops = F.grid_sample(images.float(), grid.reshape(frames, people * crop_height, crop_width, 2),
                          mode="bilinear", padding_mode="zeros", align_corners=True)
    crops = crops.reshape(frames, 3, people, crop_height, crop_width).transpose(1, 2)
    crops = crops.reshape(frames * people, 3, crop_height, crop_width)
    return normalize_imagenet(crops)


def _symmetric_pad(x: torch.Tensor, radius: int) -> torch.Tensor:
    x = torch.cat([x[..., :radius].flip(-1), x, x[..., -radius:].flip(-1)], dim=-1)
    return torch.cat([x[..., :radius, :].flip(-2), x, x[..., -radius:, :].flip(-2)], dim=-2)


def keypoints_from_heatmaps(heatmaps: torch.Tensor, boxes: torch.Tensor, crop_height: int = 256, crop_width: int = 192,
                            kernel: int = 11) -> tuple:
    """Heatmaps [N, J, h, w] of crops of boxes [N, 4] -> keypoints [N, J, 2] (frame pixels) and scores [N, J].

    Argmax, then DARK (Zhang et al. 2020): blur (sigma 0.8), log, one Newton step on the 2-D Taylor expansion,
    then back through the crop warp; as transformers' ViTPose post-processing, batched in torch.
    """
    count, joints, height, width = heatmaps.shape
    flat = heatmaps.float().reshape(count, joints, -1)
    scores, index = flat.max(dim=-1)
    x, y = (index % width).float(), torch.div(index, width, rounding_mode="floor").float()

    radius = (kernel - 1) // 2
    taps = torch.arange(-radius, radius + 1, device=heatmaps.device, dtype=torch.float32)
    gauss = torch.exp(-0.5 * (taps / 0.8) ** 2)
    gauss = gauss / gauss.sum()
    maps = _symmetric_pad(heatmaps.float().reshape(count * joints, 1, height, width), radius)
    maps = F.conv2d(F.conv2d(maps, gauss.view(1, 1, 1, -1)), gauss.view(1, 1, -1, 1))
    maps = F.pad(maps.clamp(0.001, 50).log(), (1, 1, 1, 1), mode="replicate").reshape(count, joints, -1)

    def at(dx, dy):
        position = (x.long() + 1 + dx) + (y.long() + 1 + dy) * (width + 2)
        return maps.gather(-1, position[..., None])[..., 0]

    center = at(0, 0)
    gx, gy = 0.5 * (at(1, 0) - at(-1, 0)), 0.5 * (at(0, 1) - at(0, -1))
    hxx, hyy = at(1, 0) - 2 * center + at(-1, 0), at(0, 1) - 2 * center + at(0, -1)
    hxy = 0.5 * (at(1, 1) - at(1, 0) - at(0, 1) + 2 * center - at(-1, 0) - at(0, -1) + at(-1, -1))
    eps = float(np.finfo(np.float32).eps)
    hxx, hyy = hxx + eps, hyy + eps
    det = hxx * hyy - hxy * hxy
    ok = det.abs() > 1e-12
    det = torch.where(ok, det, torch.ones_like(det))
    x = x - torch.where(ok, (hyy * gx - hxy * gy) / det, torch.zeros_like(det))
    y = y - torch.where(ok, (hxx * gy - hxy * gx) / det, torch.zeros_like(det))

    center_box, size = box_center_scale(boxes.float(), crop_height, crop_width)
    keypoints = torch.stack([x * size[:, None, 0] / (width - 1) + center_box[:, None, 0] - size[:, None, 0] / 2,
                             y * size[:, None, 1] / (height - 1) + center_box[:, None, 1] - size[:, None, 1] / 2], -1)
    return keypoints, scores


class PoseAnnotator:
    """RGB frames -> pose frames (VACE's OpenPose-18 drawing); stateless per frame."""

    def __init__(self, pose_model, detector, max_people: int = 8, detection_threshold: float = 0.3,
                 draw_face: bool = True, color_order: str = "vace", draw_resolution: int = 1024,
                 dataset_index: int = 0, renderer: str = "auto", detect_every: int = 1):
        if color_order not in COLOR_ORDERS:
            raise ValueError(f"pose color_order must be one of {COLOR_ORDERS}, got {color_order!r}")
        if renderer not in RENDERERS:
            raise ValueError(f"pose renderer must be one of {RENDERERS}, got {renderer!r}")
        if max_people < 1:
            raise ValueError(f"max_people must be at least 1, got {max_people}")
        if detect_every < 1:
            raise ValueError(f"detect_every must be at least 1 (1: detect people in every frame), got {detect_every}")
        self.pose_model, self.detector = pose_model, detector
        self.person = person_label(detector.config)
        self.max_people, self.threshold = int(max_people), float(detection_threshold)
        self.draw_face, self.color_order, self.draw_resolution = draw_face, color_order, int(draw_resolution)
        self.renderer, self.detect_every = renderer, int(detect_every)
        experts = getattr(pose_model.config.backbone_config, "num_experts", 1)
        self.dataset_index = int(dataset_index) if experts > 1 else None
        self.crop_height, self.crop_width = pose_model.config.backbone_config.image_size

    def reset(self) -> None:
        """Nothing to forget: every frame is independent."""

    @torch.inference_mode()
    def keypoints(self, images: torch.Tensor) -> tuple:
        """Images [T, 3, H, W] in [0, 1] -> keypoints [T, K, J, 2] (pixels), scores [T, K, J], person scores [T, K]."""
        frames, height, width = images.shape[0], *images.shape[-2:]
        parameter = next(self.detector.parameters())
        detected = images[::self.detect_every].to(parameter.device)
        outputs = self.detector(pixel_values=detector_inputs(detected).to(parameter.dtype))
        boxes, person_scores = persons_from_outputs(outputs.logits, outputs.pred_boxes, self.person, height, width,
                                                    self.max_people)
        if self.detect_every > 1:  # every frame takes the people found in the last detected frame
            last_detected = torch.arange(frames, device=boxes.device) // self.detect_every
            boxes, person_scores = boxes[last_detected], person_scores[last_detected]
        parameter = next(self.pose_model.parameters())
        crops = pose_crops(images.to(parameter.device), boxes.to(parameter.device), self.crop_height, self.crop_width)
        extra = {}
        if self.dataset_index is not None:
            extra["dataset_index"] = torch.full((len(crops),), self.dataset_index, device=crops.device)
        heatmaps = self.pose_model(pixel_values=crops.to(parameter.dtype), **extra).heatmaps
        keypoints, scores = keypoints_from_heatmaps(heatmaps, boxes.reshape(-1, 4).to(parameter.device),
                                                    self.crop_height, self.crop_width)
        people = boxes.shape[1]
        return (keypoints.reshape(frames, people, -1, 2), scores.reshape(frames, people, -1),
                person_scores.to(parameter.device))

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        """[3, T, H, W] in [-1, 1] -> pose frames [3, T, H, W] in [-1, 1] (skeletons on black)."""
        images = to_images(video)
        keypoints, scores, person_scores = self.keypoints(images)
        pose = self.draw(keypoints, scores, person_scores > self.threshold, *images.shape[-2:])
        return from_images(pose.to(video.device))

    def draw(self, keypoints: torch.Tensor, scores: torch.Tensor, present: torch.Tensor, height: int,
             width: int) -> torch.Tensor:
        """Keypoints [T, K, J, 2] (pixels), scores [T, K, J], people present [T, K] -> images [T, 3, H, W] in [0, 1].

        The torch renderer leaves them on the keypoints' device; the OpenCV one returns them on the CPU.
        """
        if self.renderer == "torch" or (self.renderer == "auto" and keypoints.is_cuda):
            return render_pose_frames(keypoints, scores, present, height, width, self.draw_face, self.color_order,
                                      self.draw_resolution)
        keypoints, scores, present = keypoints.cpu().numpy(), scores.cpu().numpy(), present.cpu().numpy()
        wholebody = keypoints.shape[2] == 133 and self.draw_face

        def draw_frame(points, point_scores, keep):
            body, body_scores = coco_to_openpose(points[keep, :17], point_scores[keep, :17])
            face = points[keep, FACE_SLICE] if wholebody else None
            face_scores = point_scores[keep, FACE_SLICE] if wholebody else None
            return render_pose_frame(height, width, body, body_scores, face, face_scores, self.color_order,
                                     self.draw_resolution)

        drawn = np.stack(map_frames(draw_frame, keypoints, scores, present))  # one transfer per chunk
        return torch.from_numpy(drawn).permute(0, 3, 1, 2).float() / 255.0
