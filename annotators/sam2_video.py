"""SAM2 / SAM2.1 video masks, streamed chunk by chunk with bounded memory (transformers Sam2VideoModel).

transformers' streaming session (a Sam2VideoInferenceSession created without a video, one `model(session,
frame_idx=, frame=)` call per frame) keeps every processed frame and every frame's outputs forever. SAM2 only
reads back the prompted (conditioning) frames, the last `num_maskmem - 1` frames' memories and the last
`max_object_pointers_in_encoder - 1` frames' object pointers, so after each chunk this annotator drops everything
older than that window: an hour-long stream holds the same state as a minute-long one, and the masks are exactly
those of the unpruned session.

Speed: the image encoder runs once per chunk on all its frames (batched) and its features are handed to the
session's vision cache, so the per-frame loop only runs memory attention, the mask decoder and the memory encoder.
Prompts (points and/or a box per object) apply to the first frame of the stream. Output: the union of the objects'
masks, [1, T, H, W] in {0, 1}.
"""

import json
import os

import torch
from torch.nn import functional as F

from ..models.checkpoint_io import CheckpointError
from .frames import normalize_imagenet, to_images
from .weights import load_hf_model



def load_sam2_video_model(path: str, device="cpu", dtype=torch.float32):
    """Sam2VideoModel from a transformers folder (e.g. facebook/sam2.1-hiera-tiny) or an original SAM2 / SAM2.1
    file (Meta's sam2.1_hiera_tiny.pt, kijai's sam2.1_hiera_tiny.safetensors; any of the four sizes)."""
    from transformers import Sam2VideoModel

    if os.path.isfile(path):
        from .sam2_checkpoint import load_original_sam2

        return load_original_sam2(path).to(device=device, dtype=dtype)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file or folder. Put sam2.1_hiera_tiny.safetensors (or a transformers "
                              "folder such as facebook/sam2.1-hiera-tiny) in the 'sam2' model folder.")
    return load_hf_model(Sam2VideoModel, path, ("sam2_video",), "SAM2 video segmentation",
                         "facebook/sam2.1-hiera-tiny", device, dtype)


def parse_prompts(points=None, boxes=None) -> list:
    """Prompts -> one dict per object {"points": [(x, y, label)], "box": (x0, y0, x1, y1) or None}.

    points: a list of objects, each a list of (x, y) or (x, y, label) (label 1 = on the object, 0 = not);
    boxes: a list of (x0, y0, x1, y1), one object each; a box and points with the same index are one object.
    Coordinates are pixels of the video frames.
    """
    points, boxes = list(points or []), list(boxes or [])
    if not points and not boxes:
        raise ValueError("SAM2 needs at least one prompt on the first frame: a point [x, y] on the object or a "
                         "box [x0, y0, x1, y1] around it")
    objects = []
    for index in range(max(len(points), len(boxes))):
        object_points = []
        for point in (points[index] if index < len(points) else []):
            if len(point) not in (2, 3):
                raise ValueError(f"SAM2 point {point!r}: expected [x, y] or [x, y, label]")
            object_points.append((float(point[0]), float(point[1]), int(point[2]) if len(point) == 3 else 1))
        box = None
        if index < len(boxes) and boxes[index] is not None:
            if len(boxes[index]) != 4:
                raise ValueError(f"SAM2 box {boxes[index]!r}: expected [x0, y0, x1, y1]")
            x0, y0, x1, y1 = map(float, boxes[index])
            box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        if not object_points and box is None:
            raise ValueError(f"SAM2 object {index} has neither points nor a box")
        objects.append({"points": object_points, "box": box})
    return objects


def _json_list(text: str, what: str) -> list:
    if not text or not text.strip():
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"SAM2 {what}: not valid JSON ({error})") from error
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"SAM2 {what}: expected a JSON list, got {type(value).__name__}")
    return value


def prompts_from_json(positive: str = "", negative: str = "", boxes: str = "") -> tuple:
    """UI strings -> (points, boxes) for Sam2VideoAnnotator.

    positive / negative: [{"x": .., "y": ..}, ...] (ComfyUI points editor) or [[x, y], ...]: one object, the
    points on / off it. boxes: [[x0, y0, x1, y1], ...] or {"x0":..,"y0":..,"x1":..,"y1":..}: one object per
    box; the first box joins the points' object when there are points.
    """
    def xy(item):
        if isinstance(item, dict) and "x" in item and "y" in item:
            return float(item["x"]), float(item["y"])
        if isinstance(item, (list, tuple)) and len(item) == 2:
            return float(item[0]), float(item[1])
        raise ValueError(f"SAM2 point {item!r}: expected {{\"x\": .., \"y\": ..}} or [x, y]")

    def box(item):
        if isinstance(item, dict) and {"x0", "y0", "x1", "y1"} <= set(item):
            return [float(item[k]) for k in ("x0", "y0", "x1", "y1")]
        if isinstance(item, (list, tuple)) and len(item) == 4:
            return [float(v) for v in item]
        raise ValueError(f"SAM2 box {item!r}: expected [x0, y0, x1, y1]")

    points = [(*xy(p), 1) for p in _json_list(positive, "positive points")]
    points += [(*xy(p), 0) for p in _json_list(negative, "negative points")]
    box_list = _json_list(boxes, "boxes")
    if box_list and isinstance(box_list[0], (int, float)):
        box_list = [box_list]  # a single bare box
    return ([points] if points else []), [box(b) for b in box_list]


class Sam2VideoAnnotator:
    """RGB chunks -> object masks, propagated from first-frame prompts; prunes the session after every chunk."""

    def __init__(self, model, points=None, boxes=None, mask_threshold: float = 0.0):
        self.model = model
        self.objects = parse_prompts(points, boxes)
        self.mask_threshold = mask_threshold
        config = model.config
        self.image_size = int(config.image_size if isinstance(config.image_size, int) else config.image_size[0])
        # frames whose outputs SAM2 may still read: memories of the last num_maskmem-1, pointers of the last
        # max_object_pointers_in_encoder-1 (transformers' _gather_memory_frame_outputs / _get_object_pointers)
        self.window = max(int(config.num_maskmem), int(config.max_object_pointers_in_encoder)) - 1
        self.session, self.next_frame, self.frame_size = None, 0, None

    def reset(self) -> None:
        """Forget the session: the next chunk is frame 0 of a new stream and gets the prompts again."""
        self.session, self.next_frame, self.frame_size = None, 0, None

    def _new_session(self, height: int, width: int):
        from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

        parameter = next(self.model.parameters())
        session = Sam2VideoInferenceSession(
            video_height=height, video_width=width, inference_device=parameter.device,
            inference_state_device=parameter.device, video_storage_device=parameter.device, dtype=parameter.dtype)
        scale = torch.tensor([self.image_size / width, self.image_size / height])
        for obj_id, prompt in enumerate(self.objects, start=1):
            coords = [pt[:2] for pt in prompt["points"]]
            labels = [pt[2] for pt in prompt["points"]]
            if prompt["box"] is not None:  # SAM2 takes a box as two corner points labelled 2 and 3, first
                coords = [prompt["box"][:2], prompt["box"][2:]] + coords
                labels = [2, 3] + labels
            session.add_point_inputs(session.obj_id_to_idx(obj_id), 0, {
                "point_coords": (torch.tensor(coords, dtype=torch.float32) * scale).view(1, 1, -1, 2),
                "point_labels": torch.tensor(labels, dtype=torch.int32).view(1, 1, -1)})
        session.obj_with_new_inputs = list(range(1, len(self.objects) + 1))
        return session

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """Images [T, 3, H, W] in [0, 1] -> SAM2 input [T, 3, S, S] (bilinear resize, ImageNet normalisation)."""
        parameter = next(self.model.parameters())
        x = F.interpolate(images.to(parameter.device, torch.float32), size=(self.image_size, self.image_size),
                          mode="bilinear", align_corners=False, antialias=True)
        return normalize_imagenet(x).to(parameter.dtype)

    def _cache_vision_features(self, session, pixels: torch.Tensor, first_frame: int) -> None:
        features = self.model.get_image_features(pixels, return_dict=True)
        session.cache.max_vision_features_cache_size = len(pixels)
        for i in range(len(pixels)):
            session.cache.cache_vision_features(first_frame + i, {
                "vision_feats": [f[:, i:i + 1] for f in features.fpn_hidden_states],
                "vision_pos_embeds": [p[:, i:i + 1] for p in features.fpn_position_encoding]})

    def upscale(self, low_res: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Low-resolution mask logits [N, 1, h, w] -> logits at the frame size, as transformers' post-processing."""
        x = F.interpolate(low_res.float(), (self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return F.interpolate(x, (height, width), mode="bilinear", align_corners=False)

    def prune(self) -> None:
        """Drop frames and outputs SAM2 can no longer read (older than the memory window)."""
        session, oldest = self.session, self.next_frame - self.window
        session.processed_frames = {}
        session.cache.clear_all()
        for obj_idx in range(session.get_obj_num()):
            outputs = session.output_dict_per_obj[obj_idx]["non_cond_frame_outputs"]
            for frame in [f for f in outputs if f < oldest]:
                del outputs[frame]
            tracked = session.frames_tracked_per_obj[obj_idx]
            for frame in [f for f in tracked if f < oldest]:
                del tracked[frame]

    def _rollback(self, first_frame: int, new_session: bool) -> None:
        if new_session:
            self.session = None
            return
        session = self.session
        session.processed_frames = {}
        session.cache.clear_all()
        for obj_idx in range(session.get_obj_num()):
            for store in (session.output_dict_per_obj[obj_idx]["non_cond_frame_outputs"],
                          session.output_dict_per_obj[obj_idx]["cond_frame_outputs"],
                          session.frames_tracked_per_obj[obj_idx]):
                for frame in [f for f in store if f >= first_frame]:
                    del store[frame]

    @torch.inference_mode()
    def logits(self, video: torch.Tensor) -> torch.Tensor:
        """Per-object mask logits [O, T, H, W] for the next chunk; the session advances only if the chunk succeeds."""
        images = to_images(video)
        height, width = images.shape[-2:]
        if self.frame_size is not None and self.frame_size != (height, width):
            raise ValueError(f"frame size changed from {self.frame_size} to {(height, width)} inside a SAM2 stream; "
                             "reset the stream for a new video")
        new_session = self.session is None
        if new_session:
            self.session = self._new_session(height, width)
        first_frame = self.next_frame
        try:
            pixels = self.pixel_values(images)
            self._cache_vision_features(self.session, pixels, first_frame)
            low_res = [self.model(inference_session=self.session, frame_idx=first_frame + i, frame=pixels[i]).pred_masks
                       for i in range(len(pixels))]
        except BaseException:
            self._rollback(first_frame, new_session)
            raise
        self.frame_size, self.next_frame = (height, width), first_frame + len(pixels)
        self.prune()
        stacked = torch.stack(low_res, dim=1)  # [O, T, 1, h, w]
        objects = stacked.shape[0]
        return self.upscale(stacked.flatten(0, 1), height, width).view(objects, len(pixels), height, width)

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        """[3, T, H, W] in [-1, 1] -> union of the objects' masks [1, T, H, W] in {0, 1}."""
        masks = (self.logits(video) > self.mask_threshold).any(dim=0, keepdim=True)
        return masks.float().to(video.device)

    def stored_frames(self) -> dict:
        """How much the session holds (for tests and monitoring): counts per store."""
        session = self.session
        if session is None:
            return {"processed_frames": 0, "non_cond_outputs": 0, "cond_outputs": 0, "tracked": 0, "vision_cache": 0}
        objects = range(session.get_obj_num())
        return {
            "processed_frames": len(session.processed_frames or {}),
            "non_cond_outputs": sum(len(session.output_dict_per_obj[o]["non_cond_frame_outputs"]) for o in objects),
            "cond_outputs": sum(len(session.output_dict_per_obj[o]["cond_frame_outputs"]) for o in objects),
            "tracked": sum(len(session.frames_tracked_per_obj[o]) for o in objects),
            "vision_cache": len(session.cache._vision_features),
        }
