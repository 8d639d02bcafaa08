"""Video files in and out with PyAV, chunk by chunk, plus a synthetic sample clip (needs no file, no download)."""

import os

import numpy as np
import torch

from ..models.checks import check_values


def sample_clip(frames: int = 48, height: int = 240, width: int = 416, square: int = 64, speed: float = 4.0,
                seed: int = 0) -> torch.Tensor:
    """A moving-square clip [3, T, H, W] in [-1, 1]: an orange checkered square moving right by `speed` px per
    frame over a soft gradient with a static grey disc, so edges, gray levels and motion have known answers."""
    square = max(2, min(square, height // 2, width // 3))
    generator = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    background = np.stack([0.15 + 0.25 * xs / width, 0.2 + 0.2 * ys / height, np.full_like(xs, 0.35)], axis=-1)
    background += generator.normal(0, 0.01, background.shape).astype(np.float32)
    disc = (xs - width * 0.75) ** 2 + (ys - height * 0.7) ** 2 < (height * 0.12) ** 2
    background[disc] = 0.6
    # an 8-px checkerboard of two oranges: texture makes the motion measurable inside the square too
    checker = ((np.arange(square)[:, None] // 8 + np.arange(square)[None, :] // 8) % 2).astype(np.float32)[..., None]
    patch = checker * np.float32((0.95, 0.65, 0.3)) + (1 - checker) * np.float32((0.45, 0.15, 0.0))
    clip = np.empty((frames, height, width, 3), np.float32)
    top = (height - square) // 2
    for t in range(frames):
        frame = background.copy()
        left = int(round(8 + speed * t)) % max(1, width - square)
        frame[top:top + square, left:left + square] = patch
        clip[t] = frame
    return torch.from_numpy(clip).clamp(0, 1).permute(3, 0, 1, 2) * 2 - 1


def _frames_to_video(frames: list, device) -> torch.Tensor:
    stacked = torch.from_numpy(np.stack(frames)).to(device)
    return stacked.permute(3, 0, 1, 2).float() / 127.5 - 1.0


def read_video_chunks(path: str, chunk_frames: int = 12, device="cpu", max_frames: int = 0):
    """Yield (chunk [3, T, H, W] in [-1, 1], frames per second) from a video file; the last chunk may be shorter."""
    import av

    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, not a video file; give one video file inside it")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such video file")
    if int(chunk_frames) < 1:
        raise ValueError(f"chunk_frames must be at least 1, got {chunk_frames}")
    try:
        container = av.open(path)
    except av.error.FFmpegError as error:
        raise ValueError(f"{path}: not a readable video ({error})") from error
    with container:
        if not container.streams.video:
            raise ValueError(f"{path}: the file has no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 24)
        frames, total = [], 0
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            total += 1
            if len(frames) == chunk_frames:
                yield _frames_to_video(frames, device), fps
                frames = []
            if max_frames and total >= max_frames:
                break
        if frames:
            yield _frames_to_video(frames, device), fps
        if total == 0:
            raise ValueError(f"{path}: the video has no frames")


def video_frame_count(path: str) -> int:
    """Frames in a video file as its container states them (0 when it does not say); reads no frames."""
    import av

    try:
        with av.open(path) as container:
            return int(container.streams.video[0].frames) if container.streams.video else 0
    except av.error.FFmpegError:
        return 0


VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov")  # containers that take H.264 (and the mpeg4 fallback)
MIN_SIZE = 2  # H.264 with 4:2:0 chroma needs at least 2x2 pixels


def check_output_path(path: str) -> None:
    """Raise ValueError (OSError for permissions) unless a video can be written to `path`; creates nothing."""
    if not path:
        raise ValueError("no output file given; name one such as out.mp4")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder; give a video file name inside it, e.g. {os.path.join(path, 'out.mp4')}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in VIDEO_SUFFIXES:
        what = f"'{suffix}' files" if suffix else "a file without an extension"
        hint = " (GIF holds no H.264: write .mp4 and convert it)" if suffix == ".gif" else ""
        raise ValueError(f"{path}: cannot write a video as {what}{hint}; use {', '.join(VIDEO_SUFFIXES)}")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(parent):  # the folders that would be created: the nearest existing one must be writable
        if os.path.exists(parent):
            raise ValueError(f"{path}: {parent} exists and is not a folder")
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise PermissionError(f"{path}: no permission to write there; pick a folder you can write to")


def check_video_frames(chunk: torch.Tensor, size: tuple = None) -> None:
    """Raise ValueError unless `chunk` is [3, T>0, H, W] finite in [-1, 1], of `size` (H, W) when given."""
    if not isinstance(chunk, torch.Tensor) or chunk.ndim != 4 or chunk.shape[0] != 3 or chunk.shape[1] == 0:
        shape = tuple(chunk.shape) if isinstance(chunk, torch.Tensor) else type(chunk).__name__
        raise ValueError(f"video frames must be [3, frames, height, width] with at least one frame, got {shape}")
    height, width = chunk.shape[2:]
    if height < 1 or width < 1:
        raise ValueError(f"video frames of {width}x{height} pixels hold nothing to write")
    if size is not None and (height, width) != tuple(size):
        raise ValueError(f"these frames are {width}x{height} but the open video file is {size[1]}x{size[0]}: a video "
                         "keeps one size. Resize the frames to it, or finish the file and start a new one")
    check_values(chunk, "the video frames to write", -1.0, 1.0,
                 "the writer takes video in [-1, 1] (ComfyUI IMAGE in [0, 1] converts as x * 2 - 1)")


class VideoWriter:
    """Writes [3, T, H, W] chunks in [-1, 1] to an H.264 (or the container's default) video file.

    Every chunk must have the size of the first. H.264 (4:2:0) needs even sizes of at least 2x2: odd or
    1-pixel frames are padded at the right / bottom by repeating the edge pixels (`written_size` says the
    size in the file, `size` the size given), never cropped.
    """

    def __init__(self, path: str, fps: float = 24.0, fragmented: bool = False):
        """`fragmented`: a fragmented MP4 that plays while it grows (all but the newest frame, whose fragment
        closes when the next frame or `close` comes): the file of a stream that many queue runs append to."""
        import av

        check_output_path(path)
        if not fps > 0 or fps == float("inf"):
            raise ValueError(f"fps must be a positive number, got {fps}")
        options = {"movflags": "frag_every_frame+empty_moov+default_base_moof", "flush_packets": "1"} if fragmented else {}
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.container = av.open(path, mode="w", options=options)
        except OSError as error:  # PyAV's errors are OSErrors too
            raise OSError(f"{path}: cannot create the file ({error.strerror or error}); pick a folder you can "
                          "write to") from None
        self.path, self.fps, self.stream, self.frames, self.fragmented = path, fps, None, 0, fragmented
        self.size = self.written_size = None  # (height, width) given / in the file, fixed by the first chunk

    def write(self, chunk: torch.Tensor) -> None:
        """Append a chunk of frames; a chunk that fails the checks writes nothing."""
        import av
        from fractions import Fraction

        check_video_frames(chunk, self.size)
        height, width = chunk.shape[2:]
        padded = (max(MIN_SIZE, height + height % 2), max(MIN_SIZE, width + width % 2))
        frames = ((chunk.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        if padded != (height, width):
            frames = torch.nn.functional.pad(frames.permute(1, 0, 2, 3).float(), (0, padded[1] - width, 0,
                                             padded[0] - height), mode="replicate").to(torch.uint8).permute(1, 0, 2, 3)
        frames = frames.permute(1, 2, 3, 0).cpu().numpy()
        if self.stream is None:
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            self.stream = self.container.add_stream(codec, rate=Fraction(self.fps).limit_denominator(1000))
            self.stream.height, self.stream.width = padded
            self.stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                self.stream.options = {"crf": "16"}
                if self.fragmented:  # no encoder delay, a keyframe (fragment) per second: each write lands on disk
                    self.stream.options.update(tune="zerolatency", g=str(max(1, round(self.fps))))
            self.size, self.written_size = (height, width), padded
        for array in frames:
            for packet in self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")):
                self.container.mux(packet)
            self.frames += 1

    def close(self) -> None:
        """Flush the encoder and close the file."""
        try:
            if self.stream is not None:
                for packet in self.stream.encode():
                    self.container.mux(packet)
        finally:
            self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
