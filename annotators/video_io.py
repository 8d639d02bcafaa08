"""Video files in and out with PyAV, chunk by chunk, plus a synthetic sample clip (needs no file, no download)."""

import os

import numpy as np
import torch


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

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such video file")
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


class VideoWriter:
    """Writes [3, T, H, W] chunks in [-1, 1] to an H.264 (or the container's default) video file."""

    def __init__(self, path: str, fps: float = 24.0, fragmented: bool = False):
        """`fragmented`: a fragmented MP4 that plays while it grows (all but the newest frame, whose fragment
        closes when the next frame or `close` comes): the file of a stream that many queue runs append to."""
        import av

        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        options = {"movflags": "frag_every_frame+empty_moov+default_base_moof", "flush_packets": "1"} if fragmented else {}
        self.container = av.open(path, mode="w", options=options)
        self.fps, self.stream, self.frames, self.fragmented = fps, None, 0, fragmented

    def write(self, chunk: torch.Tensor) -> None:
        """Append a chunk of frames."""
        import av
        from fractions import Fraction

        frames = ((chunk.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        frames = frames.permute(1, 2, 3, 0).cpu().numpy()
        if self.stream is None:
            height, width = frames.shape[1:3]
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            self.stream = self.container.add_stream(codec, rate=Fraction(self.fps).limit_denominator(1000))
            self.stream.width, self.stream.height = width - width % 2, height - height % 2
            self.stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                self.stream.options = {"crf": "16"}
                if self.fragmented:  # no encoder delay, a keyframe (fragment) per second: each write lands on disk
                    self.stream.options.update(tune="zerolatency", g=str(max(1, round(self.fps))))
        for array in frames:
            array = np.ascontiguousarray(array[:self.stream.height, :self.stream.width])
            for packet in self.stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                self.container.mux(packet)
            self.frames += 1

    def close(self) -> None:
        """Flush the encoder and close the file."""
        if self.stream is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
