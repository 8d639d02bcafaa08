"""Write the small inputs the bundled workflows load (ComfyUI copies nothing by itself; the pack copies these
into ComfyUI's input folder when it loads, see nodes/sample_inputs.py):

    python tools/sample_inputs.py            # -> workflows/inputs/

streamvace_sample.mp4: 49 frames (3 s at 16 fps, 480x832) of the synthetic moving-square clip of
annotators/video_io.sample_clip; the first and last frames as images (first / last frame workflows); a
reference image of the square's texture on white (VACE's reference convention: the subject on white).
Deterministic: the same files on every run.
"""

import os
import sys
from fractions import Fraction

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = os.path.join(ROOT, "workflows", "inputs")
FRAMES, HEIGHT, WIDTH, FPS = 49, 480, 832, 16
SQUARE, SPEED = 160, 8.0


def sample_frames() -> np.ndarray:
    """The sample clip as uint8 frames [T, H, W, 3]."""
    sys.path.insert(0, os.path.dirname(ROOT))
    from streamvace.annotators.video_io import sample_clip

    clip = sample_clip(FRAMES, HEIGHT, WIDTH, square=SQUARE, speed=SPEED)
    return ((clip.permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def reference_image(frames: np.ndarray) -> np.ndarray:
    """The moving square cut from frame 0 and centred on white, 480x480."""
    top, left = (HEIGHT - SQUARE) // 2, 8
    canvas = np.full((HEIGHT, HEIGHT, 3), 255, np.uint8)
    start = (HEIGHT - SQUARE) // 2
    canvas[start:start + SQUARE, start:start + SQUARE] = frames[0, top:top + SQUARE, left:left + SQUARE]
    return canvas


def write_video(path: str, frames: np.ndarray) -> None:
    """H.264 (yuv420p) mp4, small: the clip is flat colours, so a high CRF loses nothing visible."""
    import av

    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"crf": "26", "preset": "slow"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main() -> int:
    """Write every sample input into workflows/inputs/."""
    from PIL import Image

    os.makedirs(FOLDER, exist_ok=True)
    frames = sample_frames()
    write_video(os.path.join(FOLDER, "streamvace_sample.mp4"), frames)
    Image.fromarray(frames[0]).save(os.path.join(FOLDER, "streamvace_first_frame.jpg"), quality=90)
    Image.fromarray(frames[-1]).save(os.path.join(FOLDER, "streamvace_last_frame.jpg"), quality=90)
    Image.fromarray(reference_image(frames)).save(os.path.join(FOLDER, "streamvace_reference.jpg"), quality=90)
    for name in sorted(os.listdir(FOLDER)):
        print(f"{name}: {os.path.getsize(os.path.join(FOLDER, name)) // 1024} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
