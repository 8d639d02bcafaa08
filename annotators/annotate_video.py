"""Annotate a whole video file chunk by chunk (what `python -m streamvace annotate` runs)."""

import json
import time

import torch

KINDS = ("scribble", "gray", "flow", "layout", "depth", "pose", "sam2")
WEIGHT_FREE = ("scribble", "gray", "flow", "layout")


def default_layout(height: int, width: int) -> str:
    """A trajectory across the frame (the sample clip's square moves along it)."""
    y = height / 2
    return json.dumps({"points": [[0.15 * width, y], [0.85 * width, y]], "box_size": min(height, width) // 4})


def make_annotator(kind: str, height: int, width: int, frames: int, device="cpu", method: str = "",
                   model: str = "", detector: str = "", layout: str = "", points: str = "", boxes: str = ""):
    """The streaming annotator for one kind; model paths are needed for depth, pose and sam2 only."""
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind not in WEIGHT_FREE and not model:
        raise ValueError(f"--kind {kind} needs --model (a local weight folder or file); the weight-free kinds are "
                         f"{', '.join(WEIGHT_FREE)}")
    if kind == "scribble":
        from .scribble import ScribbleAnnotator

        return ScribbleAnnotator(method or "xdog")
    if kind == "gray":
        from .gray import GrayAnnotator

        return GrayAnnotator()
    if kind == "flow":
        from .flow import FlowAnnotator

        return FlowAnnotator(method or "farneback")
    if kind == "layout":
        from .layout import LayoutAnnotator

        return LayoutAnnotator(layout or default_layout(height, width), height, width, total_frames=frames,
                               device=device)
    if kind == "depth":
        from .depth import DepthAnnotator, load_depth_model

        return DepthAnnotator(load_depth_model(model, device, dtype))
    if kind == "pose":
        from .pose import PoseAnnotator, load_person_detector, load_pose_model

        if not detector:
            raise ValueError("--kind pose needs --detector (an RT-DETR transformers folder) as well as --model")
        return PoseAnnotator(load_pose_model(model, device, dtype), load_person_detector(detector, device, dtype))
    from .sam2_video import Sam2VideoAnnotator, load_sam2_video_model, prompts_from_json

    prompt_points, prompt_boxes = prompts_from_json(points, "", boxes)
    return Sam2VideoAnnotator(load_sam2_video_model(model, device, dtype), prompt_points, prompt_boxes)


def annotate_chunks(kind: str, annotator, chunks, writer, device="cpu") -> dict:
    """Run an annotator over (chunk, fps) pairs and write the control frames; returns frame count and timing."""
    frames, seconds = 0, 0.0
    for chunk, _ in chunks:
        chunk = chunk.to(device)
        start = time.perf_counter()
        if kind == "layout":
            out = annotator(chunk.shape[1])
        elif kind == "sam2":
            out = annotator(chunk).expand(3, -1, -1, -1) * 2 - 1  # masks as white-on-black video
        else:
            out = annotator(chunk)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        writer.write(out)
        frames += chunk.shape[1]
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds if seconds else float("inf")}
