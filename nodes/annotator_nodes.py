"""Annotator nodes that turn video frames into VACE control frames: depth, pose, scribble, gray, flow."""

from ..annotators.depth import NORMALIZE, DepthAnnotator, load_depth_model
from ..annotators.flow import FlowAnnotator, RaftFlow
from ..annotators.gray import GrayAnnotator
from ..annotators.line_model import load_line_model
from ..annotators.pose import RENDERERS, PoseAnnotator, load_person_detector, load_pose_model
from ..annotators.pose_render import COLOR_ORDERS
from ..annotators.scribble import METHODS as SCRIBBLE_METHODS
from ..annotators.scribble import ScribbleAnnotator
from .annotator_common import (DEPTH_FOLDER, DETECTION_FOLDER, FILTER_NOTE, POSE_FOLDER, RAFT_FOLDER, SCRIBBLE_FOLDER,
                               STREAM_INPUTS, StreamingNode, cached_model, model_choices, model_path, on_device,
                               run_stream)
from .convert import image_to_video, video_to_image

CATEGORY = "StreamVACE/annotators"
IMAGE_INPUT = ("IMAGE", {"tooltip": "Video frames (a batch of images), processed as one chunk."})


class StreamVACEDepth(StreamingNode):
    """Depth Anything V2 -> VACE depth frames (grey, near = bright), range carried across queued chunks."""

    DESCRIPTION = ("Depth control frames for VACE from Depth Anything V2 (transformers folder or original "
                   "depth_anything_v2_vit*.pth in models/depthanything). 'running' normalisation keeps brightness "
                   "steady from chunk to chunk; 'frame' is VACE's per-frame min-max.")
    CATEGORY, FUNCTION = CATEGORY, "annotate"
    RETURN_TYPES, RETURN_NAMES = ("IMAGE",), ("depth",)
    OUTPUT_TOOLTIPS = ("Depth control frames (near = bright), for VACE Control's control_video.",)

    @classmethod
    def INPUT_TYPES(cls):
        """The node's inputs (model lists are read from the model folders each time)."""
        return {"required": {
            "image": IMAGE_INPUT,
            "model": (model_choices(DEPTH_FOLDER, ("depth",), files=True), {"tooltip": "models/depthanything: a "
                      "folder like Depth-Anything-V2-Small-hf, or depth_anything_v2_vits.pth (Small is Apache-2.0; "
                      "Base/Large are CC BY-NC 4.0)." + FILTER_NOTE}),
            "normalize": (list(NORMALIZE), {"default": "running", "tooltip": "running: one range per chunk, "
                          "smoothed over chunks; frame: per-frame min-max (VACE)."}),
            "resolution": ("INT", {"default": 518, "min": 140, "max": 2044, "step": 14,
                                   "tooltip": "Network input short side (multiple of 14); 518 as trained."}),
            **STREAM_INPUTS}}

    def annotate(self, image, model, normalize, resolution, stream_id, reset):
        """Depth frames for this chunk."""
        path = model_path(DEPTH_FOLDER, model, "a Depth Anything V2 model (e.g. Depth-Anything-V2-Small-hf)")
        net = cached_model(load_depth_model, path)  # every run: loads it back if ComfyUI offloaded it
        video = on_device(image_to_video(image))
        return (video_to_image(run_stream("depth", stream_id, reset, (path, normalize, resolution),
                                          lambda: DepthAnnotator(net, resolution, normalize),
                                          lambda annotator: annotator(video))),)


class StreamVACEPose:
    """RT-DETR person detection + ViTPose -> VACE pose frames (OpenPose-18 body and face on black)."""

    DESCRIPTION = ("Pose control frames for VACE: every person found by an RT-DETR detector (models/detection) gets "
                   "ViTPose keypoints (models/vitpose), drawn as OpenPose-18 skeletons on black the way VACE's "
                   "training data was drawn (face dots when the pose model has 133 whole-body keypoints).")
    CATEGORY, FUNCTION = CATEGORY, "annotate"
    RETURN_TYPES, RETURN_NAMES = ("IMAGE",), ("pose",)
    OUTPUT_TOOLTIPS = ("Pose control frames (OpenPose-18 on black), for VACE Control's control_video.",)

    @classmethod
    def INPUT_TYPES(cls):
        """The node's inputs (model lists are read from the model folders each time)."""
        return {"required": {
            "image": IMAGE_INPUT,
            "pose_model": (model_choices(POSE_FOLDER, ("pose",)), {"tooltip": "models/vitpose: a transformers ViTPose "
                           "folder, e.g. usyd-community/vitpose-base-simple." + FILTER_NOTE}),
            "detector": (model_choices(DETECTION_FOLDER, ("detector",)), {"tooltip": "models/detection: a "
                         "transformers RT-DETR folder, e.g. PekingU/rtdetr_r50vd_coco_o365." + FILTER_NOTE}),
            "max_people": ("INT", {"default": 8, "min": 1, "max": 64, "tooltip": "People per frame at most."}),
            "detection_threshold": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 1.0, "step": 0.01,
                                              "tooltip": "Person detection score needed to draw a person."}),
            "draw_face": ("BOOLEAN", {"default": True, "tooltip": "Draw face landmarks (whole-body models only)."}),
            "color_order": (list(COLOR_ORDERS), {"default": "vace", "tooltip": "vace: R/B as in VACE's training "
                            "frames; openpose: the OpenPose / controlnet_aux palette."}),
        }, "optional": {
            "renderer": (list(RENDERERS), {"default": "auto", "tooltip": "torch: drawn on the GPU, no CPU round "
                         "trip (over 99% of pixels identical to VACE's drawing, the rest on limb edges); opencv: "
                         "VACE's exact drawing on CPU threads; auto: torch when the models run on a GPU."}),
            "detect_every": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Run the person detector on "
                             "every N-th frame of a chunk and reuse its boxes in between (faster; 1: every frame)."}),
        }}

    def annotate(self, image, pose_model, detector, max_people, detection_threshold, draw_face, color_order,
                 renderer="auto", detect_every=1):
        """Pose frames for this chunk."""
        pose = cached_model(load_pose_model, model_path(POSE_FOLDER, pose_model, "a ViTPose transformers folder"))
        people = cached_model(load_person_detector, model_path(DETECTION_FOLDER, detector,
                                                               "an RT-DETR transformers folder"))
        annotator = PoseAnnotator(pose, people, max_people, detection_threshold, draw_face, color_order,
                                  renderer=renderer, detect_every=detect_every)
        return (video_to_image(annotator(on_device(image_to_video(image)))),)


class StreamVACEScribble:
    """XDoG / Canny (no weights) or a learned line model -> VACE scribble frames (dark lines on white)."""

    DESCRIPTION = ("Scribble / edge control frames for VACE: dark lines on white. xdog and canny need no weights; "
                   "'model' runs a line-drawing net from models/scribble (VACE's netG_A_latest.pth or sk_model.pth).")
    CATEGORY, FUNCTION = CATEGORY, "annotate"
    RETURN_TYPES, RETURN_NAMES = ("IMAGE",), ("scribble",)
    OUTPUT_TOOLTIPS = ("Scribble control frames (dark lines on white), for VACE Control's control_video.",)

    @classmethod
    def INPUT_TYPES(cls):
        """The node's inputs (model lists are read from the model folders each time)."""
        return {"required": {
            "image": IMAGE_INPUT,
            "method": (list(SCRIBBLE_METHODS), {"default": "xdog", "tooltip": "xdog: line drawing; canny: edges; "
                       "model: learned line drawing (needs line_model)."}),
            "xdog_threshold": ("FLOAT", {"default": 32.0, "min": 1.0, "max": 255.0, "step": 1.0,
                                         "tooltip": "Lower draws more lines (xdog)."}),
            "canny_low": ("INT", {"default": 100, "min": 0, "max": 255, "tooltip": "Canny low threshold."}),
            "canny_high": ("INT", {"default": 200, "min": 0, "max": 255, "tooltip": "Canny high threshold."}),
            "invert": ("BOOLEAN", {"default": False, "tooltip": "White lines on black instead."}),
        }, "optional": {
            "line_model": (model_choices(SCRIBBLE_FOLDER, ("line",), folders=False, files=True),
                           {"tooltip": "models/scribble: netG_A_latest.pth (VACE-Annotators) or sk_model.pth."
                                       + FILTER_NOTE}),
        }}

    def annotate(self, image, method, xdog_threshold, canny_low, canny_high, invert, line_model=None):
        """Scribble frames for this chunk."""
        net = None
        if method == "model":
            net = cached_model(_load_line_model, model_path(SCRIBBLE_FOLDER, line_model,
                                                            "netG_A_latest.pth from ali-vilab/VACE-Annotators"))
        annotator = ScribbleAnnotator(method, xdog_threshold, canny_low, canny_high, net, invert)
        return (video_to_image(annotator(on_device(image_to_video(image)))),)


def _load_line_model(path, device, dtype):
    return load_line_model(path).to(device=device, dtype=dtype)


class StreamVACEGray:
    """RGB -> VACE gray frames (the colorization control)."""

    DESCRIPTION = ("Gray control frames for VACE's colorization task. VACE made its data with OpenCV's BGR2GRAY on "
                   "RGB frames (R and B weights swapped); keep that on to match, off for standard luma.")
    CATEGORY, FUNCTION = CATEGORY, "annotate"
    RETURN_TYPES, RETURN_NAMES = ("IMAGE",), ("gray",)
    OUTPUT_TOOLTIPS = ("Grey frames (VACE colorization), for VACE Control's control_video.",)

    @classmethod
    def INPUT_TYPES(cls):
        """The node's inputs (model lists are read from the model folders each time)."""
        return {"required": {
            "image": IMAGE_INPUT,
            "vace_channel_order": ("BOOLEAN", {"default": True, "tooltip": "Use VACE's swapped R/B weights."}),
        }}

    def annotate(self, image, vace_channel_order):
        """Gray frames for this chunk."""
        return (video_to_image(GrayAnnotator(vace_channel_order)(on_device(image_to_video(image)))),)


class StreamVACEFlow(StreamingNode):
    """Optical flow (Farnebäck, or RAFT with torchvision) -> VACE flow-colour frames; carries the last frame."""

    DESCRIPTION = ("Optical-flow control frames for VACE (Middlebury colour wheel, as VACE's RAFT annotator draws "
                   "them). Farnebäck needs no weights; RAFT needs torchvision and a torchvision RAFT file in "
                   "models/raft. The stream keeps the last frame so queued chunks join up.")
    CATEGORY, FUNCTION = CATEGORY, "annotate"
    RETURN_TYPES, RETURN_NAMES = ("IMAGE",), ("flow",)
    OUTPUT_TOOLTIPS = ("Optical flow frames (Middlebury colours), for VACE Control's control_video.",)

    @classmethod
    def INPUT_TYPES(cls):
        """The node's inputs (model lists are read from the model folders each time)."""
        return {"required": {
            "image": IMAGE_INPUT,
            "method": (["farneback", "raft"], {"default": "farneback", "tooltip": "farneback: OpenCV, no weights."}),
            "max_flow": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1000.0, "step": 0.5, "tooltip": "0: each "
                         "frame scaled by its largest motion (VACE); > 0: fixed scale in pixels (no flicker)."}),
            **STREAM_INPUTS,
        }, "optional": {
            "raft_model": (model_choices(RAFT_FOLDER, ("raft",), folders=False, files=True),
                           {"tooltip": "models/raft: raft_large_C_T_SKHT_V2-ff5fadd5.pth (torchvision)."
                                       + FILTER_NOTE}),
        }}

    def annotate(self, image, method, max_flow, stream_id, reset, raft_model=None):
        """Flow frames for this chunk."""
        raft = None
        if method == "raft":
            raft = cached_model(_load_raft, model_path(RAFT_FOLDER, raft_model, "a torchvision RAFT weight file"))
        video = on_device(image_to_video(image))
        return (video_to_image(run_stream("flow", stream_id, reset, (method, raft_model if raft else None, max_flow),
                                          lambda: FlowAnnotator(method, raft, max_flow),
                                          lambda annotator: annotator(video))),)


def _load_raft(path, device, dtype):
    return RaftFlow(path, device=device)


NODE_CLASS_MAPPINGS = {node.__name__: node for node in (
    StreamVACEDepth, StreamVACEPose, StreamVACEScribble, StreamVACEGray, StreamVACEFlow)}
NODE_DISPLAY_NAME_MAPPINGS = {
    "StreamVACEDepth": "Depth (StreamVACE)", "StreamVACEPose": "Pose (StreamVACE)",
    "StreamVACEScribble": "Scribble / Edges (StreamVACE)", "StreamVACEGray": "Gray (StreamVACE)",
    "StreamVACEFlow": "Optical Flow (StreamVACE)"}
