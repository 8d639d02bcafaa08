"""Layout / trajectory frames and masks for VACE: layout from JSON or masks, SAM2 video masks, box masks, mask edits."""

from ..annotators.layout import LayoutAnnotator
from ..annotators.mask_outline import draw_mask_contours
from ..annotators.masks import BoxMaskAnnotator, adjust_masks
from ..annotators.sam2_video import Sam2VideoAnnotator, load_sam2_video_model, prompts_from_json
from . import host
from .annotator_common import (FILTER_NOTE, SAM2_FOLDER, STREAM_INPUTS, StreamingNode, cached_model, model_choices,
                               model_path, on_device, run_stream)
from .convert import image_to_video, mask_to_video, video_to_image, video_to_mask

CATEGORY = "StreamVACE/annotators"
LAYOUT_TOOLTIP = ('Boxes or trajectories in frame pixels. One moving box: {"boxes": [[x0,y0,x1,y1], ...keyframes], '
                  '"color": [r,g,b]}; one trajectory: [{"x":..,"y":..}, ...] (points editor / tracker); several '
                  'objects: a list of those.')
SIZE_INPUTS = {
    "width": ("INT", {"default": 832, "min": 16, "max": 4096, "step": 16, "tooltip": "Frame width."}),
    "height": ("INT", {"default": 480, "min": 16, "max": 4096, "step": 16, "tooltip": "Frame height."}),
    "frames": ("INT", {"default": 12, "min": 1, "max": 1024, "tooltip": "Frames in this chunk."}),
    "total_frames": ("INT", {"default": 81, "min": 0, "max": 100000, "tooltip": "Frames the keyframes are spread "
                     "over (0: one keyframe per frame, as a tracker gives them); afterwards objects stay put."}),
    "box_size": ("INT", {"default": 64, "min": 2, "max": 4096, "tooltip": "Box drawn around trajectory points."}),
}


class StreamVACELayout(StreamingNode):
    """Boxes / trajectories (JSON) -> VACE layout frames (2-px outlines on white); the stream carries the frame."""

    DESCRIPTION = ("Layout / trajectory control frames for VACE: boxes moving along keyframes or trajectories, "
                   "outlined on white as in VACE's layout task. Queued runs continue the motion.")
    CATEGORY, FUNCTION = CATEGORY, "render"
    RETURN_TYPES, RETURN_NAMES = ("IMAGE",), ("layout",)
    OUTPUT_TOOLTIPS = ("Layout control frames (boxes on white), for VACE Control's control_video.",)

    @classmethod
    def INPUT_TYPES(cls):
        """The node's inputs (model lists are read from the model folders each time)."""
        return {"required": {
            "layout": ("STRING", {"multiline": True, "tooltip": LAYOUT_TOOLTIP,
                                  "default": '{"boxes": [[96, 160, 288, 352], [544, 128, 736, 320]]}'}),
            **SIZE_INPUTS,
            "thickness": ("FLOAT", {"default": 2.0, "min": 1.0, "max": 32.0, "step": 1.0,
                                    "tooltip": "Outline width in pixels (VACE: 2)."}),
            **STREAM_INPUTS}}

    def render(self, layout, width, height, frames, total_frames, box_size, thickness, stream_id, reset):
        """Layout frames for this chunk."""
        settings = (layout, width, height, total_frames, box_size, thickness)
        return (video_to_image(run_stream("layout", stream_id, reset, settings, lambda: LayoutAnnotator(
            layout, height, width, total_frames, box_size, thickness, device=host.torch_device()),
            lambda annotator: annotator(frames))),)


class StreamVACEMaskLayout:
    """Masks (e.g. SAM2 tracks) -> VACE layout-track frames: each mask's outline, 3 px, on white."""

    DESCRIPTION = "Layout control frames from masks, as VACE's layout_track task draws them: outer contours on white."
    CATEGORY, FUNCTION = CATEGORY, "render"
    RETURN_TYPES, RETURN_NAMES = ("IMAGE",), ("layout",)
    OUTPUT_TOOLTIPS = ("Layout control frames (mask outlines on white), for VACE Control's control_video.",)

    @classmethod
    def INPUT_TYPES(cls):
        """The node's inputs (model lists are read from the model folders each time)."""
        return {"required": {
            "masks": ("MASK", {"tooltip": "One mask per frame (white = object)."}),
            "thickness": ("INT", {"default": 3, "min": 1, "max": 32, "tooltip": "Outline width (VACE: 3)."}),
        }}

    def render(self, masks, thickness):
        """Outline frames for these masks."""
        images = draw_mask_contours(mask_to_video(masks), thickness=thickness)
        return (video_to_image(images.transpose(0, 1) * 2 - 1),)


class StreamVACESAM2(StreamingNode):
    """SAM2 / SAM2.1 video masks from first-frame points or boxes, propagated chunk by chunk with bounded memory."""

    DESCRIPTION = ("Object masks for VACE inpainting: SAM2 / SAM2.1 video segmentation (models/sam2: the original "
                   ".pt / .safetensors files or a transformers folder) prompted on the stream's first frame and "
                   "tracked through every queued chunk; memory stays bounded however long the stream runs.")
    CATEGORY, FUNCTION = CATEGORY, "segment"
    RETURN_TYPES, RETURN_NAMES = ("MASK",), ("masks",)
    OUTPUT_TOOLTIPS = ("Masks of the tracked objects (white = object), e.g. for VACE Control's control_mask.",)

    @classmethod
    def INPUT_TYPES(cls):
        """The node's inputs (model lists are read from the model folders each time)."""
        return {"required": {
            "image": ("IMAGE", {"tooltip": "Video frames of this chunk."}),
            "model": (model_choices(SAM2_FOLDER, ("sam2",), files=True), {"tooltip": "models/sam2: "
                      "sam2.1_hiera_tiny.pt / .safetensors (any size, SAM2 or SAM2.1) or a transformers folder such as "
                      "facebook/sam2.1-hiera-tiny." + FILTER_NOTE}),
            "positive_points": ("STRING", {"multiline": True, "default": "", "tooltip": 'Points on the object in '
                                "first-frame pixels: [{\"x\": .., \"y\": ..}, ...] or [[x, y], ...]."}),
            "negative_points": ("STRING", {"multiline": True, "default": "", "tooltip": "Points not on the object."}),
            "boxes": ("STRING", {"multiline": True, "default": "", "tooltip": "Boxes [[x0, y0, x1, y1], ...]: one "
                      "object each (the first joins the points' object)."}),
            "mask_threshold": ("FLOAT", {"default": 0.0, "min": -20.0, "max": 20.0, "step": 0.1,
                                         "tooltip": "Logit threshold; higher gives tighter masks."}),
            **STREAM_INPUTS}}

    def segment(self, image, model, positive_points, negative_points, boxes, mask_threshold, stream_id, reset):
        """Masks for this chunk."""
        path = model_path(SAM2_FOLDER, model, "sam2.1_hiera_tiny.safetensors or a transformers SAM2 video folder")
        points, box_list = prompts_from_json(positive_points, negative_points, boxes)
        settings = (path, positive_points, negative_points, boxes, mask_threshold)
        net = cached_model(load_sam2_video_model, path)  # every run: loads it back if ComfyUI offloaded it
        video = on_device(image_to_video(image))
        return (video_to_mask(run_stream("sam2", stream_id, reset, settings,
                                         lambda: Sam2VideoAnnotator(net, points, box_list, mask_threshold),
                                         lambda annotator: annotator(video))),)


class StreamVACEBoxMask(StreamingNode):
    """Filled (moving) boxes -> MASK, from the same JSON as the layout node; the stream carries the frame."""

    DESCRIPTION = "Box masks for VACE inpainting (white = regenerate), static or moving along keyframes / trajectories."
    CATEGORY, FUNCTION = CATEGORY, "render"
    RETURN_TYPES, RETURN_NAMES = ("MASK",), ("masks",)
    OUTPUT_TOOLTIPS = ("Filled box masks (white = inside a box), e.g. for VACE Control's control_mask.",)

    @classmethod
    def INPUT_TYPES(cls):
        """The node's inputs (model lists are read from the model folders each time)."""
        return {"required": {
            "layout": ("STRING", {"multiline": True, "default": '{"boxes": [[256, 120, 576, 360]]}',
                                  "tooltip": LAYOUT_TOOLTIP}),
            **SIZE_INPUTS,
            **STREAM_INPUTS}}

    def render(self, layout, width, height, frames, total_frames, box_size, stream_id, reset):
        """Masks for this chunk."""
        settings = (layout, width, height, total_frames, box_size)
        return (video_to_mask(run_stream("box_mask", stream_id, reset, settings, lambda: BoxMaskAnnotator(
            layout, height, width, total_frames, box_size, device=host.torch_device()),
            lambda annotator: annotator(frames))),)


class StreamVACEMaskAdjust:
    """Grow / shrink, feather and invert masks; repeat a single static mask over a chunk."""

    DESCRIPTION = ("Mask utilities for VACE's inpainting input: grow (or shrink, negative) by pixels, blur the edge, "
                   "invert, and repeat one static mask to the chunk length.")
    CATEGORY, FUNCTION = CATEGORY, "adjust"
    RETURN_TYPES, RETURN_NAMES = ("MASK",), ("masks",)
    OUTPUT_TOOLTIPS = ("The adjusted masks.",)

    @classmethod
    def INPUT_TYPES(cls):
        """The node's inputs (model lists are read from the model folders each time)."""
        return {"required": {
            "masks": ("MASK", {"tooltip": "Masks (white = regenerate)."}),
            "grow": ("INT", {"default": 0, "min": -512, "max": 512, "tooltip": "Pixels to grow (< 0 shrinks)."}),
            "blur": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 256.0, "step": 0.5,
                               "tooltip": "Edge feather sigma."}),
            "invert": ("BOOLEAN", {"default": False, "tooltip": "Swap regenerate and keep."}),
            "frames": ("INT", {"default": 0, "min": 0, "max": 1024, "tooltip": "Repeat a single mask to this many "
                       "frames (0: keep the count)."}),
        }}

    def adjust(self, masks, grow, blur, invert, frames):
        """The adjusted masks."""
        return (video_to_mask(adjust_masks(on_device(mask_to_video(masks)), grow, blur, invert, frames)),)


NODE_CLASS_MAPPINGS = {node.__name__: node for node in (
    StreamVACELayout, StreamVACEMaskLayout, StreamVACESAM2, StreamVACEBoxMask, StreamVACEMaskAdjust)}
NODE_DISPLAY_NAME_MAPPINGS = {
    "StreamVACELayout": "Layout / Trajectory (StreamVACE)", "StreamVACEMaskLayout": "Layout from Masks (StreamVACE)",
    "StreamVACESAM2": "SAM2 Video Masks (StreamVACE)", "StreamVACEBoxMask": "Box Masks (StreamVACE)",
    "StreamVACEMaskAdjust": "Adjust Masks (StreamVACE)"}
