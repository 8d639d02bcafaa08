"""The `streamvace` command line (also `python -m streamvace`)."""

import argparse
import os
import sys


def _info(args) -> int:
    """Print the version, the compute devices and the attention kernels (the node layer is not loaded)."""
    import torch

    from . import __version__
    from .models.wan.attention import available_backends

    print(f"StreamVACE {__version__}, torch {torch.__version__}, "
          f"CUDA {'available: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'not available'}")
    print(f"attention kernels: {', '.join(available_backends())}")
    return 0


class UsageError(ValueError):
    """A bad command-line value: printed as one line, exit code 2."""


def _positive(name: str, value: int, allow_zero: bool = False) -> None:
    """Refuse a count that must be positive (or zero when `allow_zero`: 0 = no limit)."""
    if value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"{name} must be {'0 (no limit) or more' if allow_zero else 'at least 1'}, got {value}")


def _device(name: str):
    """The torch device to run on: `name`, or CUDA when available; refuses a device this machine lacks."""
    import torch

    if not name:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device; use cpu or cuda (cuda:1 for the second GPU)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available here (no GPU, or torch was built without CUDA); "
                         "use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: only cpu and cuda are supported")
    return str(device)


def _output(path: str) -> None:
    """Refuse an output path no video can be written to, before any work is done."""
    from .annotators.video_io import check_output_path

    try:
        check_output_path(path)
    except (ValueError, OSError) as error:
        raise UsageError(f"--out {error}") from None


def _written(writer, height: int, width: int) -> str:
    """'WxH', plus the padding the writer added, for the report line."""
    written = writer.written_size
    if written is None or written == (height, width):
        return f"{width}x{height}"
    return f"{width}x{height} (padded to {written[1]}x{written[0]}: H.264 needs even sizes)"


def _annotate(args) -> int:
    """Annotate a video file (or the built-in sample clip) chunk by chunk into a control video."""
    from .annotators.annotate_video import annotate_chunks, make_annotator
    from .annotators.video_io import VideoWriter, read_video_chunks, sample_clip

    _positive("--chunk", args.chunk)
    _positive("--frames", args.frames, allow_zero=True)
    _output(args.out)
    device = _device(args.device)
    if args.input == "sample":
        clip = sample_clip(frames=args.frames or 48)
        chunks = [(clip[:, i:i + args.chunk], 24.0) for i in range(0, clip.shape[1], args.chunk)]
    else:
        chunks = list(read_video_chunks(args.input, args.chunk, max_frames=args.frames))
    height, width = chunks[0][0].shape[-2:]
    total = sum(chunk.shape[1] for chunk, _ in chunks)
    annotator = make_annotator(args.kind, height, width, total, device, args.method, args.model, args.detector,
                               args.layout, args.points, args.boxes)
    with VideoWriter(args.out, fps=chunks[0][1]) as writer:
        stats = annotate_chunks(args.kind, annotator, chunks, writer, device)
    print(f"{args.kind}: {stats['frames']} frames of {_written(writer, height, width)} in chunks of {args.chunk} on "
          f"{device}, {stats['fps']:.1f} frames/s annotating -> {args.out}")
    return 0


def _sample_clip(args) -> int:
    """Write the synthetic moving-square clip to a video file."""
    from .annotators.video_io import VideoWriter, sample_clip

    _positive("--frames", args.frames)
    _positive("--height", args.height)
    _positive("--width", args.width)
    _output(args.out)
    with VideoWriter(args.out, fps=24.0) as writer:
        writer.write(sample_clip(frames=args.frames, height=args.height, width=args.width))
    print(f"sample clip: {writer.frames} frames of {_written(writer, args.height, args.width)} -> {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="streamvace", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, nodes and devices").set_defaults(run=_info)

    from .annotators.annotate_video import KINDS

    annotate = commands.add_parser("annotate", help="turn a video into VACE control frames (depth, scribble, ...)")
    annotate.add_argument("--kind", required=True, choices=KINDS,
                          help="scribble, gray, flow and layout need no weights")
    annotate.add_argument("--input", required=True, help="a video file, or 'sample' for the built-in moving square")
    annotate.add_argument("--out", required=True, help="the control video to write (.mp4)")
    annotate.add_argument("--chunk", type=int, default=12, help="frames per chunk (state carries across chunks)")
    annotate.add_argument("--frames", type=int, default=0, help="stop after this many frames (0: all)")
    annotate.add_argument("--method", default="", help="scribble: xdog|canny; flow: farneback")
    annotate.add_argument("--model", default="", help="depth / pose / sam2: a local model folder or file")
    annotate.add_argument("--detector", default="", help="pose: an RT-DETR transformers folder")
    annotate.add_argument("--layout", default="", help="layout: boxes / trajectory JSON (default: across the frame)")
    annotate.add_argument("--points", default="", help='sam2: first-frame points, e.g. [{"x": 100, "y": 80}]')
    annotate.add_argument("--boxes", default="", help="sam2: first-frame boxes [[x0, y0, x1, y1]]")
    annotate.add_argument("--device", default="", help="cuda or cpu (default: cuda when available)")
    annotate.set_defaults(run=_annotate)

    sample = commands.add_parser("sample-clip", help="write the synthetic moving-square clip")
    sample.add_argument("--out", required=True)
    sample.add_argument("--frames", type=int, default=48)
    sample.add_argument("--height", type=int, default=240)
    sample.add_argument("--width", type=int, default=416)
    sample.set_defaults(run=_sample_clip)
    return parser


def main(argv=None) -> int:
    """Run one sub-command; returns the process exit code (2, with a one-line message, for bad input)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as error:  # bad values, files or model folders: say what to fix, no traceback
        if os.environ.get("STREAMVACE_TRACEBACK"):
            raise
        print(f"streamvace {args.command}: {error}", file=sys.stderr)
        return 2
