"""The `streamvace` command line (also `python -m streamvace`)."""

import argparse
import itertools
import os
import sys


def _info(args) -> int:
    """Print the version, the compute devices and the attention kernels (the node layer is not loaded)."""
    import torch

    from .. import __version__
    from ..models.wan.attention import available_backends

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
    from ..annotators.video_io import check_output_path

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
    from ..annotators.annotate_video import annotate_chunks, make_annotator
    from ..annotators.video_io import VideoWriter, read_video_chunks, sample_clip, video_frame_count

    _positive("--chunk", args.chunk)
    _positive("--frames", args.frames, allow_zero=True)
    _output(args.out)
    device = _device(args.device)
    if args.input == "sample":
        clip = sample_clip(frames=args.frames or 48)
        chunks = [(clip[:, i:i + args.chunk], 24.0) for i in range(0, clip.shape[1], args.chunk)]
        total = clip.shape[1]
    else:  # streamed: one chunk in memory at a time
        chunks = read_video_chunks(args.input, args.chunk, max_frames=args.frames)
        total = args.frames or video_frame_count(args.input)  # layouts spread over it; 0 if the file does not say
    try:
        first, chunks = _peek(chunks)  # the first chunk gives the size and the frame rate
    except (ValueError, OSError) as error:
        print(f"streamvace annotate: {error}", file=sys.stderr)
        return 2
    height, width = first[0].shape[-2:]
    try:
        annotator = make_annotator(args.kind, height, width, total, device, args.method, args.model, args.detector,
                                   args.layout, args.points, args.boxes)
    except (ValueError, OSError) as error:  # bad options or model files: say what to fix, no traceback
        print(f"streamvace annotate: {error}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    bar = tqdm(chunks, desc=f"annotate {args.kind}", unit="chunk", file=sys.stderr, dynamic_ncols=True,
               total=-(-total // args.chunk) if total else None)
    with VideoWriter(args.out, fps=first[1]) as writer:
        stats = annotate_chunks(args.kind, annotator, bar, writer, device)
    bar.close()
    print(f"{args.kind}: {stats['frames']} frames of {_written(writer, height, width)} in chunks of {args.chunk} on "
          f"{device}, {stats['fps']:.1f} frames/s annotating -> {args.out}")
    return 0


def _peek(chunks) -> tuple:
    """(first item, an iterator that still yields every item) of a lazy iterator."""
    chunks = iter(chunks)
    first = next(chunks)
    return first, itertools.chain([first], chunks)


def _sample_clip(args) -> int:
    """Write the synthetic moving-square clip to a video file."""
    from ..annotators.video_io import VideoWriter, sample_clip

    _positive("--frames", args.frames)
    _positive("--height", args.height)
    _positive("--width", args.width)
    _output(args.out)
    with VideoWriter(args.out, fps=24.0) as writer:
        writer.write(sample_clip(frames=args.frames, height=args.height, width=args.width))
    print(f"sample clip: {writer.frames} frames of {_written(writer, args.height, args.width)} -> {args.out}")
    return 0


def _fail(command: str, error) -> int:
    """Print one line (no traceback) for bad input and return exit code 2."""
    print(f"streamvace {command}: {error}", file=sys.stderr)
    return 2


def _lora(text: str) -> tuple:
    """'path' or 'path:strength' -> (path, strength)."""
    path, colon, strength = text.rpartition(":")
    if colon:
        try:
            return path, float(strength)
        except ValueError:
            pass  # a colon inside the path (C:\\...)
    return text, 1.0


def _steps(text: str) -> tuple:
    """'1000,750,500,250' -> (1000, 750, 500, 250)."""
    try:
        steps = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"steps must be comma-separated integers, got {text!r}") from None
    if not steps or any(not 0 < s <= 1000 for s in steps):
        raise argparse.ArgumentTypeError(f"steps must lie in 1..1000, got {text!r}")
    return steps


def _generate(args) -> int:
    """Generate a video from a prompt (and an optional input video / control) chunk by chunk into an MP4."""
    from .generate import GenerateOptions, generate

    schedule = list(args.prompt_at)
    if args.prompt_schedule:
        try:
            with open(args.prompt_schedule, encoding="utf-8") as handle:
                schedule.insert(0, handle.read())
        except OSError as error:
            return _fail("generate", f"--prompt-schedule {args.prompt_schedule}: {error.strerror or error}")
    options = GenerateOptions(
        prompt=args.prompt, prompt_schedule="\n".join(schedule), out=args.out, models_dir=args.models_dir,
        input=args.input, control=args.control, method=args.method, layout=args.layout, mask=args.mask,
        mask_boxes=args.mask_boxes, outpaint=args.outpaint, expand=args.expand, references=tuple(args.reference), first_frame=args.first_frame,
        last_frame=args.last_frame, chunks=args.chunks, width=args.width, height=args.height, seed=args.seed,
        policy=args.policy, steps=args.steps, strength=args.strength, fps=args.fps, device=args.device,
        dtype=args.dtype, decoder=args.decoder, download=args.download, model=args.model, vace=args.vace,
        loras=tuple(args.lora), vae=args.vae, tiny_vae=args.tiny_vae, text_encoder=args.text_encoder,
        tokenizer=args.tokenizer, depth_model=args.depth_model, pose_model=args.pose_model, detector=args.detector)
    done = {"frames": 0}
    try:
        stats = generate(options, on_chunk=lambda video, info: done.update(info))
    except (ValueError, OSError) as error:  # bad options, missing or unfit model files: what to fix, no traceback
        return _fail("generate", str(error).rstrip())
    except KeyboardInterrupt:  # the writer closed the file: it plays, with every chunk finished so far
        print(f"streamvace generate: interrupted; {args.out} holds the {done['frames']} frames finished",
              file=sys.stderr)
        return 130
    print(f"{stats['frames']} frames ({stats['chunks']} chunks) at {args.width}x{args.height}, "
          f"{stats['fps']:g} fps -> {stats['out']}")
    return 0


def _add_generate(commands) -> None:
    """The `generate` sub-command's arguments."""
    from .generate import CONTROLS
    from ..models.catalog import default_models_dir

    g = commands.add_parser("generate", help="prompt (+ input video, control, references, first/last frame, "
                                             "outpaint) -> MP4, chunk by chunk",
                            description="Generate a video with the streaming engine, chunk by chunk (9 frames, then "
                                        "12 per chunk) in constant memory. Model files are looked up in --models-dir "
                                        "(ComfyUI's folder names); missing ones are listed with where to get them.")
    g.add_argument("--prompt", required=True, help="what the video shows (before the first --prompt-at switch)")
    g.add_argument("--prompt-at", action="append", default=[], metavar="CHUNK:PROMPT",
                   help="switch to PROMPT from chunk CHUNK on (0 = the first chunk; 9 frames, then 12 per chunk), "
                        "re-caching the recent frames under it as LongLive does; repeatable, e.g. "
                        "--prompt-at '4: a dog running'")
    g.add_argument("--prompt-schedule", default="", metavar="FILE",
                   help="a text file of 'chunk: prompt' lines, as the Prompt Schedule node takes (with --prompt-at)")
    g.add_argument("--out", required=True, help="the video to write (.mp4)")
    g.add_argument("--models-dir", default=default_models_dir(),
                   help="ComfyUI-style models folder (default: $STREAMVACE_MODELS_DIR or ./models)")
    g.add_argument("--download", action="store_true", help="fetch missing model files from Hugging Face first")
    g.add_argument("--input", default="", help="an input video to follow (read chunk by chunk), or 'sample'")
    g.add_argument("--control", default="none", choices=CONTROLS,
                   help="how the input steers the video: an annotator, or mask (inpaint where --mask is white)")
    g.add_argument("--method", default="", help="scribble: xdog|canny; flow: farneback")
    g.add_argument("--layout", default="", help="layout: boxes / trajectory JSON (default: across the frame)")
    g.add_argument("--mask", default="", help="mask: a mask video, white = generate")
    g.add_argument("--mask-boxes", default="", help="mask: boxes [[x0, y0, x1, y1], ...] in output pixels")
    g.add_argument("--outpaint", default="", help="extend the input video on these sides: e.g. left,right or all")
    g.add_argument("--expand", type=float, default=0.25, help="outpaint: added size per side, as a fraction")
    g.add_argument("--reference", action="append", default=[], help="a reference image (repeatable)")
    g.add_argument("--first-frame", default="", help="an image the video starts from")
    g.add_argument("--last-frame", default="", help="an image the video ends on")
    g.add_argument("--chunks", type=int, default=0, help="chunks to generate (default: as long as --input)")
    g.add_argument("--width", type=int, default=832)
    g.add_argument("--height", type=int, default=480)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--policy", default="longlive",
                   help="KV cache policy: longlive (trained default), motionstream, full (<= 21 frames), infinity "
                        "(LongLive-infinity: relative RoPE, for endless streams), deep_forcing (deep sink + "
                        "participative compression; parameters as deep_forcing:sink_frames=12,top_frames=4: the deep "
                        "sink and the top-C frames kept, sink + 4 recent + top <= 21)")
    g.add_argument("--steps", type=_steps, default="1000,750,500,250", help="denoising timesteps")
    g.add_argument("--strength", type=float, default=1.0, help="VACE control strength")
    g.add_argument("--fps", type=float, default=16.0, help="frame rate without an input video")
    g.add_argument("--device", default="", help="cuda or cpu (default: cuda when available)")
    g.add_argument("--dtype", default="", choices=("", "bf16", "fp16", "fp32"), help="default: bf16 on CUDA, else fp32")
    g.add_argument("--decoder", default="auto", choices=("auto", "wan", "tiny"), help="auto: the tiny VAE when present")
    for name, help_text in (("--model", "the DiT (default: diffusion_models/longlive_base.pt + its LoRA)"),
                            ("--vace", "the VACE module file"), ("--vae", "the Wan2.1 VAE"),
                            ("--tiny-vae", "the tiny VAE (taew2_1)"),
                            ("--text-encoder", "umT5-XXL: a file or a Hugging Face folder"),
                            ("--tokenizer", "the umT5 tokenizer folder"), ("--depth-model", "depth: a model folder"),
                            ("--pose-model", "pose: a ViTPose folder"), ("--detector", "pose: an RT-DETR folder")):
        g.add_argument(name, default="", help=help_text)
    g.add_argument("--lora", action="append", default=[], type=_lora, help="PATH[:STRENGTH], repeatable")
    g.set_defaults(run=_generate)


def _queue(args) -> int:
    """Queue an API-format workflow N times on a running ComfyUI, follow the runs and report outputs and errors."""
    from tqdm import tqdm

    from .comfy_client import ComfyClient, ComfyError, PromptRejected, follow, load_api_workflow, set_input

    if args.runs < 1:
        return _fail("queue", f"--runs must be >= 1, got {args.runs}")
    try:
        graph = load_api_workflow(args.workflow)
        for assignment in args.set:
            set_input(graph, assignment)
        client = ComfyClient(args.url, timeout=args.timeout)
    except ValueError as error:
        return _fail("queue", error)
    bar = tqdm(total=args.runs, unit="run", desc="queue", file=sys.stderr, dynamic_ncols=True)
    try:
        client.connect()
        runs = []
        try:
            for _ in range(args.runs):
                runs.append(client.queue(graph))
        except PromptRejected as error:
            bar.close()
            return _fail("queue", f"ComfyUI rejected the workflow: {error}")
        order = {run.prompt_id: i + 1 for i, run in enumerate(runs)}

        def on_event(run, kind, data):
            if kind == "progress":
                bar.set_postfix_str(f"run {order[run.prompt_id]}: node {data.get('node')} "
                                    f"{data.get('value')}/{data.get('max')}", refresh=True)
            elif kind == "executing" and data.get("node") is not None:
                bar.set_postfix_str(f"run {order[run.prompt_id]}: node {data['node']}", refresh=True)
            elif kind in ("execution_success", "execution_error", "execution_interrupted"):
                bar.update(1)

        follow(client, runs, on_event)
    except ComfyError as error:
        bar.close()
        print(f"streamvace queue: {error}", file=sys.stderr)
        return 1
    finally:
        client.close()
    bar.close()
    failed = 0
    for i, run in enumerate(runs, 1):
        if run.status == "success":
            print(f"run {i}/{len(runs)} ({run.prompt_id}): done, outputs: {', '.join(run.files()) or 'none'}")
        else:
            failed += 1
            print(f"run {i}/{len(runs)} ({run.prompt_id}): {run.status}: {run.error}", file=sys.stderr)
    return 1 if failed else 0


def _add_queue(commands) -> None:
    """The `queue` sub-command's arguments."""
    q = commands.add_parser("queue", help="queue an API-format workflow N times on a running ComfyUI",
                            description="Post an API-format workflow (workflows/api/*.json) N times to a running "
                                        "ComfyUI, follow its websocket, show progress, report outputs and errors. "
                                        "Exit code 0: every run succeeded; 1: a run failed or the server is "
                                        "unreachable; 2: bad input or a workflow the server rejects.")
    q.add_argument("workflow", help="an API-format workflow JSON")
    q.add_argument("--runs", "-n", type=int, default=1, help="how many times to queue it (a stream continues)")
    q.add_argument("--url", default="http://127.0.0.1:8188", help="the ComfyUI server")
    q.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="override an input before queueing, e.g. 6.text=\"a red car\" (repeatable)")
    q.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for any message from ComfyUI")
    q.set_defaults(run=_queue)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="streamvace", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, nodes and devices").set_defaults(run=_info)

    from ..annotators.annotate_video import KINDS

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
    _add_generate(commands)
    _add_queue(commands)
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
