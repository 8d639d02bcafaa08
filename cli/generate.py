"""`streamvace generate`: prompt (+ input video, control, references, first/last frame, outpaint) -> MP4, chunk
by chunk through the streaming engine, in constant memory.

The input video is read lazily (annotators/video_io.read_video_chunks) and resized as it is read; each chunk
of the stream takes exactly its frames (9, then 12), is annotated (annotators keep their state across
chunks), steers one chunk of generation as a VACE control, is decoded by a streaming VAE and appended to the
output file. Nothing but the current chunk and one read-ahead chunk is ever held.
"""

import json
import os
import sys
from dataclasses import dataclass, field

import torch

from ..models import catalog
from ..models.wan.sampler import DEFAULT_STEPS
from ..models.wan.vace_context import pixel_frames_for_chunk

CONTROLS = ("none", "depth", "pose", "scribble", "gray", "flow", "layout", "mask")
NEEDS_INPUT = ("depth", "pose", "scribble", "gray", "flow", "mask")
DTYPE_NAMES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class MissingModels(ValueError):
    """Model files are missing; the message lists each file, its folder and where to get it."""


@dataclass
class GenerateOptions:
    """Everything `generate` needs; paths left empty are looked up in models_dir."""

    prompt: str
    out: str
    prompt_schedule: str = ""  # 'chunk: prompt' lines as the Prompt Schedule node takes; --prompt holds before them
    models_dir: str = field(default_factory=catalog.default_models_dir)
    input: str = ""  # a video file, or "sample" (the synthetic moving square)
    control: str = "none"
    method: str = ""  # scribble: xdog|canny
    layout: str = ""  # layout JSON
    mask: str = ""  # mask video (white = generate)
    mask_boxes: str = ""  # [[x0, y0, x1, y1], ...] in output pixels, white = generate
    outpaint: str = ""  # sides: "left,right" or "all"
    expand: float = 0.25
    references: tuple = ()
    first_frame: str = ""
    last_frame: str = ""
    chunks: int = 0  # 0: as many as the input video covers
    width: int = 832
    height: int = 480
    seed: int = 0
    policy: str = "longlive"
    steps: tuple = DEFAULT_STEPS
    strength: float = 1.0
    fps: float = 16.0
    device: str = ""
    dtype: str = ""
    decoder: str = "auto"  # auto (tiny when present) | wan | tiny
    download: bool = False
    model: str = ""
    vace: str = ""
    loras: tuple = ()  # (path, strength) pairs; empty: the LongLive LoRA with the default model
    vae: str = ""
    tiny_vae: str = ""
    text_encoder: str = ""
    tokenizer: str = ""
    depth_model: str = ""
    pose_model: str = ""
    detector: str = ""
    read_chunk: int = 12  # frames per read from the input video

    @property
    def uses_vace(self) -> bool:
        """Any VACE input at all (control, outpaint, references, first/last frame)."""
        return (self.control != "none" or bool(self.outpaint) or bool(self.references) or bool(self.first_frame)
                or bool(self.last_frame))


def check_options(o: GenerateOptions) -> None:
    """Reject bad combinations before anything is loaded (the message says what to change)."""
    if not o.prompt.strip():
        raise ValueError("--prompt is empty: say what the video shows")
    if o.prompt_schedule:
        from ..models.wan.prompt_schedule import parse_prompt_schedule

        last = parse_prompt_schedule(o.prompt_schedule)[-1][0]
        if o.chunks and last >= o.chunks:
            raise ValueError(f"the prompt schedule switches at chunk {last}, but the video has only {o.chunks} chunks "
                             f"(0 to {o.chunks - 1}): raise --chunks or move the switch earlier")
    if o.control not in CONTROLS:
        raise ValueError(f"--control must be one of {', '.join(CONTROLS)}, got {o.control!r}")
    if o.height % 16 or o.width % 16 or o.height < 16 or o.width < 16:
        raise ValueError(f"--height and --width must be positive multiples of 16, got {o.height}x{o.width}")
    if o.chunks < 0:
        raise ValueError(f"--chunks must be >= 1 (or 0: as many as the input covers), got {o.chunks}")
    if not o.input and o.chunks == 0:
        raise ValueError("without --input, say how long the video is: --chunks N (9 frames, then 12 per chunk)")
    if o.input and o.control in ("none", "layout") and not o.outpaint:
        raise ValueError("--input is only read to steer the video: add --control (depth, pose, scribble, gray, flow, "
                         "mask) or --outpaint")
    if o.control in NEEDS_INPUT and not o.input:
        raise ValueError(f"--control {o.control} annotates an input video: give --input VIDEO (or 'sample')")
    if o.outpaint and not o.input:
        raise ValueError("--outpaint extends an input video: give --input VIDEO (or 'sample')")
    if o.outpaint and o.control != "none":
        raise ValueError("--outpaint is a control of its own: leave --control at none")
    if o.control == "mask" and bool(o.mask) == bool(o.mask_boxes):
        raise ValueError("--control mask needs exactly one of --mask VIDEO (white = generate) or --mask-boxes JSON")
    if (o.mask or o.mask_boxes) and o.control != "mask":
        raise ValueError("--mask / --mask-boxes are for --control mask")
    if o.decoder not in ("auto", "wan", "tiny"):
        raise ValueError(f"--decoder must be auto, wan or tiny, got {o.decoder!r}")
    if o.dtype and o.dtype not in DTYPE_NAMES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPE_NAMES)}, got {o.dtype!r}")
    if o.device and o.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {o.device}: CUDA is not available here; use --device cpu")
    if o.read_chunk < 1:
        raise ValueError(f"the read chunk must be >= 1 frame, got {o.read_chunk}")
    from ..models.wan.kv_cache import cache_policy_from_text

    cache_policy_from_text(o.policy)  # an unknown policy or parameter is refused before any model loads
    if not o.out.lower().endswith((".mp4", ".mkv", ".mov")):
        raise ValueError(f"--out must be a video file (.mp4, .mkv or .mov), got {o.out!r}")
    for path in (o.input if o.input != "sample" else "", o.mask, o.first_frame, o.last_frame, *o.references):
        if path and not os.path.isfile(path):
            raise ValueError(f"{path}: no such file")
    if o.outpaint:
        from ..annotators.outpaint import inner_box, parse_sides

        inner_box(o.height, o.width, parse_sides(o.outpaint), o.expand)


@dataclass
class ModelPaths:
    """The files one run loads."""

    model: str = ""
    vace: str = ""
    loras: tuple = ()
    vae: str = ""
    tiny_vae: str = ""
    text_encoder: str = ""
    tokenizer: str = ""
    depth: str = ""
    pose: str = ""
    detector: str = ""


def resolve_models(o: GenerateOptions, log=print) -> ModelPaths:
    """Find every file the run needs (given paths first, then models_dir); download on request; else say
    exactly which files are missing, where they go and where to get them (MissingModels)."""
    from ..models.wan.text_encoder import find_tokenizer

    paths, missing = ModelPaths(), []

    def pick(attr, given, key, needed=True):
        if given:
            if not os.path.exists(given):
                raise ValueError(f"{given}: no such file or folder")
            setattr(paths, attr, given)
            return
        found = catalog.find(key, o.models_dir)
        if found is None and needed:
            missing.append(key)
        setattr(paths, attr, found or "")

    pick("model", o.model, "dit")
    if o.loras:
        for lora, _ in o.loras:
            if not os.path.isfile(lora):
                raise ValueError(f"{lora}: no such LoRA file")
        paths.loras = tuple(o.loras)
    elif not o.model:  # LongLive's released model is its base plus this LoRA
        lora = catalog.find("lora", o.models_dir)
        paths.loras = ((lora, 1.0),) if lora else ()
        if lora is None:
            missing.append("lora")
    pick("vace", o.vace, "vace", needed=o.uses_vace)
    pick("text_encoder", o.text_encoder, "text_encoder")
    if not paths.text_encoder and not o.tokenizer and catalog.find("tokenizer", o.models_dir) is None:
        missing.append("tokenizer")
    if paths.text_encoder:
        try:
            paths.tokenizer = find_tokenizer(paths.text_encoder, o.tokenizer or None)
        except FileNotFoundError:
            if o.tokenizer:
                raise
            missing.append("tokenizer")
    pick("vae", o.vae, "vae", needed=False)
    pick("tiny_vae", o.tiny_vae, "tiny_vae", needed=False)
    wants_wan = o.decoder == "wan" or (o.uses_vace and not paths.tiny_vae)
    if o.decoder == "tiny" and not paths.tiny_vae:
        missing.append("tiny_vae")
    if not paths.vae and (wants_wan or not paths.tiny_vae):
        missing.append("vae")
    if o.control == "depth":
        pick("depth", o.depth_model, "depth")
    if o.control == "pose":
        pick("pose", o.pose_model, "pose")
        pick("detector", o.detector, "detector")
    if missing and o.download:
        for key in missing:
            log(f"downloading {catalog.CATALOG[key].what} ...")
            catalog.download(key, o.models_dir)
        o.download = False
        return resolve_models(o, log)
    if missing:
        raise MissingModels(f"missing model files (put them where shown, or run again with --download):\n"
                            f"{catalog.missing_report(missing, o.models_dir)}")
    return paths


class FrameFeed:
    """A lazily read video handed out in any number of frames, resized to the output as it is read.

    Holds at most the frames asked for plus one read chunk; `max_held` records the most it ever held.
    """

    def __init__(self, chunks, height: int, width: int, fit: bool = True):
        self._chunks, self.height, self.width, self.fit = iter(chunks), height, width, fit
        self._buffer, self._held, self._done = [], 0, False
        self.frames_read, self.max_held, self.fps, self._last = 0, 0, None, None

    def _pull(self) -> bool:
        from ..models.wan.stream_session import fit_video

        if self._done:
            return False
        try:
            chunk, fps = next(self._chunks)
        except StopIteration:
            self._done = True
            return False
        self.fps = self.fps or fps
        chunk = fit_video(chunk, self.height, self.width) if self.fit else chunk
        self._buffer.append(chunk)
        self._held += chunk.shape[1]
        self.frames_read += chunk.shape[1]
        self.max_held = max(self.max_held, self._held)
        return True

    def exhausted(self) -> bool:
        """True when no frame is left (reads ahead one chunk at most)."""
        while self._held == 0 and self._pull():
            pass
        return self._held == 0

    def take(self, count: int) -> torch.Tensor:
        """The next `count` frames [C, count, H, W]; past the end the last frame is held."""
        while self._held < count and self._pull():
            pass
        if self._held == 0 and self._last is None:
            raise ValueError("the input video has no frames")
        pieces, needed = [], count
        while needed and self._buffer:
            head = self._buffer[0]
            piece, rest = head[:, :needed], head[:, needed:]
            pieces.append(piece)
            needed -= piece.shape[1]
            if rest.shape[1]:
                self._buffer[0] = rest
            else:
                self._buffer.pop(0)
        self._held -= count - needed
        if needed:  # ran out: hold the last frame
            last = pieces[-1][:, -1:] if pieces else self._last
            pieces.append(last.expand(-1, needed, -1, -1))
        out = torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]
        self._last = out[:, -1:].clone()
        return out


def _video_source(path: str, read_chunk: int, frames: int, height: int, width: int):
    """(chunk, fps) pairs from a file, or from the synthetic sample clip made at the output size."""
    from ..annotators.video_io import read_video_chunks, sample_clip

    if path == "sample":
        clip = sample_clip(frames=frames, height=height, width=width)
        return ((clip[:, i:i + read_chunk], 24.0) for i in range(0, frames, read_chunk))
    return read_video_chunks(path, read_chunk)


def load_image(path: str) -> torch.Tensor:
    """An image file -> [3, H, W] in [-1, 1]."""
    import cv2

    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: not a readable image (png, jpg, webp, ...)")
    return torch.from_numpy(image[:, :, ::-1].copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def _mask_from_video(chunk: torch.Tensor) -> torch.Tensor:
    return (chunk.mean(dim=0, keepdim=True) > 0).float()  # white (> mid grey) = generate


def _box_masks(text: str, frames: int, height: int, width: int) -> torch.Tensor:
    from ..annotators.masks import fill_boxes

    try:
        boxes = torch.tensor(json.loads(text), dtype=torch.float32)
    except (ValueError, TypeError) as error:
        raise ValueError(f"--mask-boxes must be JSON [[x0, y0, x1, y1], ...], got {text!r} ({error})") from None
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"--mask-boxes must be JSON [[x0, y0, x1, y1], ...], got {text!r}")
    return fill_boxes(boxes[None].expand(frames, -1, -1), height, width)


class _Progress:
    def __init__(self, total):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="chunk", desc="generate", file=sys.stderr, dynamic_ncols=True)

    def log(self, text):
        """A line above the progress bar (stderr)."""
        self.bar.write(text, file=sys.stderr)

    def stage(self, text):
        """What is happening now, shown beside the bar."""
        self.bar.set_postfix_str(text, refresh=True)


class ChunkControls:
    """The VACE control of each chunk, cut from the lazily read input: annotated frames, masks, an outpaint
    canvas, references, and the first / last frame on the first / last chunk."""

    def __init__(self, o: GenerateOptions, paths: ModelPaths, device, total_frames: int):
        from ..annotators.annotate_video import make_annotator
        from ..models.wan.stream_session import fit_video

        self.o, self.device = o, device
        self.annotator = None
        if o.control not in ("none", "mask"):
            self.annotator = make_annotator(o.control, o.height, o.width, total_frames, device, o.method,
                                            paths.depth or paths.pose, paths.detector, o.layout)
        self.mask_feed = None
        if o.mask:
            from ..annotators.video_io import read_video_chunks

            self.mask_feed = FrameFeed(read_video_chunks(o.mask, o.read_chunk), o.height, o.width)
        fit = lambda image: fit_video(image[:, None], o.height, o.width)[:, 0]  # noqa: E731
        self.references = torch.stack([fit(load_image(p)) for p in o.references]) if o.references else None
        self.first = fit(load_image(o.first_frame)) if o.first_frame else None
        self.last = fit(load_image(o.last_frame)) if o.last_frame else None
        self.sides = None
        if o.outpaint:
            from ..annotators.outpaint import parse_sides

            self.sides = parse_sides(o.outpaint)

    def for_chunk(self, chunk: int, count: int, source: torch.Tensor, final: bool) -> list:
        """[Control] for chunk `chunk` of `count` frames ([] without VACE); `source` is its input frames."""
        from ..models.wan.stream_session import Control
        from ..models.wan.vace_context import frame_reference_control

        o, frames, mask = self.o, None, None
        if not o.uses_vace:
            return []
        if self.annotator is not None:
            frames = self.annotator(count) if o.control == "layout" else self.annotator(source.to(self.device))
            frames = frames.float().cpu()
        elif o.control == "mask":
            frames = source
            mask = (_mask_from_video(self.mask_feed.take(count)) if self.mask_feed is not None
                    else _box_masks(o.mask_boxes, count, o.height, o.width))
        elif self.sides is not None:
            from ..annotators.outpaint import outpaint_into_box

            frames, mask = outpaint_into_box(source, o.height, o.width, self.sides, o.expand)
        # Every chunk's control has the same inputs (frames, mask, references), so the session continues its VAE
        # encoder streams instead of starting a new control: grey frames / an all-ones mask are "no control"
        # (the context builder's own defaults), and the first / last frame are composited here as the session would.
        first = self.first if chunk == 0 else None
        last = self.last if final else None
        if first is not None or last is not None:
            frames, mask = frame_reference_control(count, first, last, frames, mask)
        frames = torch.zeros(3, count, o.height, o.width) if frames is None else frames
        mask = torch.ones(1, count, o.height, o.width) if mask is None else mask
        return [Control(frames=frames, mask=mask, references=self.references, strength=o.strength, timing="call")]


def _open_input(o: GenerateOptions, total_frames: int):
    """The input video's FrameFeed (None without --input), sized for the output or for outpaint's inner box."""
    if not o.input:
        return None
    height, width = o.height, o.width
    if o.outpaint:  # the source fills the inner box, at its own aspect
        from ..annotators.outpaint import inner_box, parse_sides

        _, _, height, width = inner_box(o.height, o.width, parse_sides(o.outpaint), o.expand)
    feed = FrameFeed(_video_source(o.input, o.read_chunk, total_frames or 48, height, width), height, width)
    if feed.exhausted():
        raise ValueError(f"{o.input}: the video has no frames")
    return feed


def _load_models(o: GenerateOptions, paths: ModelPaths, device, dtype, progress) -> tuple:
    """(prompt embeddings, prompt schedule or None, DiT, decoding VAE, encoding VAE); the text encoder is freed
    before the DiT loads."""
    from ..models.vae.tiny_vae import load_tiny_vae
    from ..models.vae.wan_vae import load_wan_vae
    from ..models.wan.checkpoint import load_wan_model
    from ..models.wan.prompt_schedule import PromptSchedule, parse_prompt_schedule
    from ..models.wan.text_encoder import load_text_encoder

    progress.stage("text encoder")
    encoder = load_text_encoder(paths.text_encoder, paths.tokenizer, dtype=dtype, device=device)
    prompt = encoder.encode(o.prompt)
    schedule = None
    if o.prompt_schedule:  # every prompt encoded now: the text encoder is gone before generation starts
        schedule = PromptSchedule(tuple((chunk, encoder.encode(text))
                                        for chunk, text in parse_prompt_schedule(o.prompt_schedule)))
    del encoder  # umT5-XXL is 11 GB: gone before the DiT comes
    if device.type == "cuda":
        torch.cuda.empty_cache()
    progress.stage("DiT")
    model = load_wan_model(paths.model, vace_path=paths.vace or None, loras=paths.loras, dtype=dtype, device=device)
    if model.config.text_dim != prompt.shape[-1]:
        raise ValueError(f"the text encoder gives {prompt.shape[-1]}-wide embeddings but the DiT takes "
                         f"{model.config.text_dim}: they are not a Wan2.1 pair")
    progress.stage("VAE")
    wan_vae = load_wan_vae(paths.vae, dtype=dtype, device=device) if paths.vae else None
    tiny = load_tiny_vae(paths.tiny_vae, dtype=dtype, device=device) if paths.tiny_vae else None
    decoder = {"wan": wan_vae, "tiny": tiny}.get(o.decoder) or tiny or wan_vae
    return prompt, schedule, model, decoder, wan_vae or tiny


def generate(o: GenerateOptions, log=None, on_chunk=None) -> dict:
    """Run a whole generation; returns {'frames', 'chunks', 'fps', 'frames_read', 'max_frames_held', 'out'}.

    on_chunk(frames [3, T, H, W] in [-1, 1], stats) is called after each chunk is written.
    """
    from ..annotators.video_io import VideoWriter
    from ..models.vae.async_decode import AsyncDecoder
    from ..models.wan.kv_cache import cache_policy_from_text
    from ..models.wan.stream import StreamConfig
    from ..models.wan.stream_session import StreamSession

    check_options(o)
    paths = resolve_models(o, log or (lambda text: print(text, file=sys.stderr)))
    device = torch.device(o.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPE_NAMES[o.dtype] if o.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    total = pixel_frames_for_chunk(0) + pixel_frames_for_chunk(1) * (o.chunks - 1) if o.chunks else 0
    progress = _Progress(o.chunks or None)
    try:
        feed = _open_input(o, total)
        fps = feed.fps if feed is not None else o.fps
        prompt, schedule, model, decoder, encoder_vae = _load_models(o, paths, device, dtype, progress)
        config = StreamConfig(height=o.height, width=o.width, policy=cache_policy_from_text(o.policy), steps=tuple(o.steps),
                              seed=o.seed)
        session = StreamSession(model, config, encoder_vae if o.uses_vace else None)
        # a schedule entry at chunk 0 starts the video (no needless switch from --prompt and back)
        session.set_prompt(prompt if schedule is None or schedule.at(0) is None else schedule.at(0))
        controls = ChunkControls(o, paths, device, total)
        frames_out, written, chunk, final = 0, 0, 0, False
        # chunk N decodes on a side CUDA stream while chunk N+1's DiT runs; frames are written in order
        with VideoWriter(o.out, fps=fps) as writer, AsyncDecoder() as decoded:
            def write(videos):
                nonlocal frames_out, written
                for video in videos:
                    writer.write(video[0])
                    frames_out, written = frames_out + video.shape[2], written + 1
                    progress.bar.update(1)
                    if on_chunk is not None:
                        on_chunk(video[0], _stats(frames_out, written, fps, o.out, feed))

            while not final:
                count = pixel_frames_for_chunk(chunk)
                source = feed.take(count) if feed is not None else None
                final = chunk + 1 == o.chunks if o.chunks else feed.exhausted()
                progress.stage(f"chunk {chunk + 1}")
                # the schedule switches prompts at its chunk indices, re-caching the KV window under the new one
                latents = session.generate(1, controls.for_chunk(chunk, count, source, final), prompts=schedule)
                decoded.submit(decoder, latents)
                chunk += 1
                write(decoded.take())
            write(decoded.drain())
        progress.stage("done")
    finally:
        progress.bar.close()
    return _stats(frames_out, written, fps, o.out, feed)


def _stats(frames, chunks, fps, out, feed) -> dict:
    return {"frames": frames, "chunks": chunks, "out": out, "fps": fps,
            "frames_read": feed.frames_read if feed is not None else 0,
            "max_frames_held": feed.max_held if feed is not None else 0}
