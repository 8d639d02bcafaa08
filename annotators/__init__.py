"""Streaming control-signal extractors (depth, pose, scribble, gray, flow, layout, masks); no ComfyUI imports."""
