"""Saving a stream: every queue run appends its frames to one growing video file per stream_id."""

import atexit
import os

import torch

from ..annotators.video_io import VideoWriter, check_video_frames
from . import host, model_cache
from .convert import image_to_video
from .streams import free_streams, registry

_WRITERS = registry("save_stream")
SAVE_BATCH = 12  # frames encoded between progress updates (one later chunk)


def _check_prefix(prefix: str) -> str:
    folder = os.path.abspath(host.output_directory())
    if not prefix.strip() or os.path.commonpath([folder, os.path.abspath(os.path.join(folder, prefix))]) != folder:
        raise ValueError(f"filename_prefix {prefix!r} must name a file inside the output folder; use a relative name "
                         "such as 'streamvace/stream'")
    return folder


def _next_path(prefix: str) -> str:
    folder = _check_prefix(prefix)
    index = 1
    while os.path.exists(os.path.join(folder, f"{prefix}_{index:05d}.mp4")):
        index += 1
    return os.path.join(folder, f"{prefix}_{index:05d}.mp4")


class _StreamFile:
    def __init__(self, prefix: str, fps: float):
        self.settings = (prefix, fps)
        self.path = _next_path(prefix)
        self.writer = VideoWriter(self.path, fps, fragmented=True)

    def close(self) -> None:
        """Finish the file (the registry calls this whenever the stream is freed or dropped)."""
        self.writer.close()


def _close(stream_id: str) -> None:
    _WRITERS.reset(stream_id)


def _discard(stream_id: str) -> None:
    state = _WRITERS.get(stream_id)
    _WRITERS.reset(stream_id)
    try:
        state.writer.close()
    except Exception:  # noqa: BLE001 - the writer is broken already; the error that broke it is the one to report
        pass
    if os.path.exists(state.path):
        os.remove(state.path)


@atexit.register
def _close_all() -> None:
    for stream_id in _WRITERS.ids():
        _close(stream_id)


class StreamVACESaveStream:
    """Append this run's frames to the stream's video file (a fragmented MP4, playable while it grows)."""

    DESCRIPTION = ("Saves a stream as ONE video: each queue run appends its frames to output/<prefix>_NNNNN.mp4 "
                   "(H.264, fragmented MP4: it plays while it grows, all but the newest frame, which lands with the next "
                   "run). 'finish' closes the file; the next run starts a new one. Changing fps or prefix also starts "
                   "a new file. Every run must have the file's frame size; odd sizes are padded by one pixel "
                   "(edge repeated), as H.264 needs even sizes.")
    CATEGORY = "StreamVACE/output"
    RETURN_TYPES = ()
    OUTPUT_TOOLTIPS = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        """Frames, stream id, file prefix, fps and the finish switch."""
        return {"required": {
            "images": ("IMAGE", {"tooltip": "This run's frames (e.g. from VAE Decode Stream)."}),
            "stream_id": ("STRING", {"default": "main", "tooltip": "Runs with the same id append to one file."}),
            "filename_prefix": ("STRING", {"default": "streamvace/stream", "tooltip": "File name under ComfyUI's "
                                "output folder; a sub-folder may be named (no '..')."}),
            "fps": ("FLOAT", {"default": 16.0, "min": 1.0, "max": 120.0, "step": 1.0,
                              "tooltip": "Frame rate of the file (Wan2.1 generates 16 fps)."}),
            "finish": ("BOOLEAN", {"default": False, "tooltip": "Close the file after this run's frames."}),
        }}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        """Always run: every queue run appends."""
        return float("nan")

    def save(self, images, stream_id, filename_prefix, fps, finish):
        """Append the frames; show the file in the UI."""
        video = image_to_video(images)
        current = _WRITERS.get(stream_id)
        same_file = current is not None and current.settings == (filename_prefix, fps)
        check_video_frames(video, current.writer.size if same_file else None)  # a refused run writes nothing
        _check_prefix(filename_prefix)
        if current is not None and not same_file:
            _close(stream_id)  # finish the old file properly before starting the new one
        state = _WRITERS.get_or_create(stream_id, (filename_prefix, fps), lambda: _StreamFile(filename_prefix, fps))
        progress = host.Progress(video.shape[1])
        try:
            for batch in video.split(SAVE_BATCH, dim=1):
                state.writer.write(batch)
                progress.update(batch.shape[1])
        except BaseException:
            if state.writer.frames == 0:  # a file that never got a frame: remove it rather than keep a broken writer
                _discard(stream_id)
            raise
        subfolder, filename = os.path.split(os.path.relpath(state.path, host.output_directory()))
        if finish:
            _close(stream_id)
        # the shape of core SaveVideo's result, so the UI previews the growing file
        return {"ui": {"images": [{"filename": filename, "subfolder": subfolder, "type": "output"}],
                       "animated": (True,)}}


class StreamVACEFreeStreams:
    """Free streams (KV caches, VAE and annotator state) and, optionally, the models StreamVACE keeps loaded."""

    DESCRIPTION = ("Frees the named stream in every StreamVACE node (sampler, decoders, annotators, stylizer) or, "
                   "with an empty stream_id, all of them; 'models' also drops the loaded models StreamVACE keeps "
                   "for continuing streams. Open stream files are closed. Queue it on its own when memory runs low.")
    CATEGORY = "StreamVACE/output"
    RETURN_TYPES = ()
    OUTPUT_TOOLTIPS = ()
    FUNCTION = "free"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        """Which stream, and whether to drop models too."""
        return {"required": {
            "stream_id": ("STRING", {"default": "", "tooltip": "Empty: every stream."}),
            "models": ("BOOLEAN", {"default": False, "tooltip": "Also drop StreamVACE's loaded models."}),
        }}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        """Always run when queued."""
        return float("nan")

    def free(self, stream_id, models):
        """Free and report what was freed."""
        for sid in _WRITERS.ids():
            if not stream_id or sid == stream_id:
                _close(sid)
        freed = free_streams(stream_id)
        if models:
            model_cache.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"ui": {"text": [f"freed {len(freed)} stream(s){' and the models' if models else ''}"]}}


NODE_CLASS_MAPPINGS = {"StreamVACESaveStream": StreamVACESaveStream, "StreamVACEFreeStreams": StreamVACEFreeStreams}
NODE_DISPLAY_NAME_MAPPINGS = {"StreamVACESaveStream": "Save Stream as One Video (StreamVACE)",
                              "StreamVACEFreeStreams": "Free Streams (StreamVACE)"}
