"""A controllable stream: the chunk loop plus its prompt, VACE controls and references, across many calls.

This is what a sampler node (or a script) holds between calls: `generate(n)` continues the same video
for n more chunks. Controls are given as whole videos indexed by the stream's own frame position (or,
for live input, relative to each call); the session cuts each chunk's frames out, builds its VACE
context with per-control VAE encoder streams, and commits everything only when the chunk succeeded.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..checks import check_finite
from ..memory import state_nbytes
from .stream import StreamConfig, VaceInput, WanStream
from ..vae.stream import same_weights
from .vace_reference import VaceReference
from .vace_context import (VaceContextBuilder, frame_reference_control, pixel_frame_start, pixel_frames_for_chunk,
                           prefill_chunks)
from .stream_checks import check_chunks, check_config, check_control_input, check_memory, check_prompt
from .dit import WanDiT

TIMINGS = ("stream", "call")


@dataclass
class Control:
    """One VACE control. frames [3, T, H, W] and mask [1, T, H, W] are whole videos in [-1, 1] / [0, 1].

    timing 'stream': frame i of the video steers frame i of the stream; 'call': every call starts again at
    the video's first frame (live input). A video that runs out holds its last frame. first_frame starts
    the stream from an image; last_frame ends each call's last chunk on one. references: [N, 3, H, W].
    """

    frames: torch.Tensor = None
    mask: torch.Tensor = None
    references: torch.Tensor = None
    first_frame: torch.Tensor = None
    last_frame: torch.Tensor = None
    strength: float = 1.0
    timing: str = "stream"

    def __post_init__(self):
        if self.timing not in TIMINGS:
            raise ValueError(f"control timing must be one of {TIMINGS}, got {self.timing!r}")
        names = ("frames", "mask", "references", "first_frame", "last_frame")
        if all(getattr(self, name) is None for name in names):
            raise ValueError("a VACE control needs a control video, a mask, reference images or a first/last "
                             "frame; connect at least one")
        for name in names:  # once, here: the chunk loop then runs without host syncs
            if getattr(self, name) is not None:
                check_control_input(name, getattr(self, name))
        if self.frames is not None and self.mask is not None and self.frames.shape[2:] != self.mask.shape[2:]:
            raise ValueError(f"the control's frames are {tuple(self.frames.shape[2:])} (height, width) but its mask "
                             f"is {tuple(self.mask.shape[2:])}: give masks of the frames' size")
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)) or \
                not abs(self.strength) < float("inf"):
            raise ValueError(f"the control's strength must be a finite number (1.0 = VACE's scale), "
                             f"got {self.strength!r}")


def fit_video(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Scale [C, T, H, W] to cover height x width, then centre-crop (keeps the aspect ratio)."""
    c, t, h, w = video.shape
    if (h, w) == (height, width):
        return video
    scale = max(height / h, width / w)
    size = (max(height, round(h * scale)), max(width, round(w * scale)))
    scaled = F.interpolate(video.transpose(0, 1).float(), size=size, mode="bilinear", align_corners=False,
                           antialias=True).transpose(0, 1)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return scaled[:, :, top:top + height, left:left + width]


def _fingerprint(video: torch.Tensor):
    """A cheap content key of [C, T, H, W]: its shape and each frame's float64 sum and sum of squares."""
    if video is None:
        return None
    frames = video.detach().reshape(video.shape[0], video.shape[1], -1).unbind(1)
    sums = torch.stack([torch.stack([f.sum(dtype=torch.float64), f.double().square().sum()]) for f in frames])
    return tuple(video.shape), tuple(map(tuple, sums.tolist()))


@dataclass
class _ControlState:
    """A control's VAE encoder streams, what identifies it, and its references' K/V."""

    builder: VaceContextBuilder
    kind: tuple  # timing and which inputs it has
    last_window: object = None  # fingerprint of the control frames / mask its last chunk encoded ('stream' timing)
    references: tuple = field(default=(None, None))  # (images, VaceReference)


def _kind(control: Control) -> tuple:
    return (control.timing, *(getattr(control, name) is not None
                              for name in ("frames", "mask", "first_frame", "last_frame", "references")))


def _window(video: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """Frames [start, start + length) of [C, T, H, W], holding the last frame past the end."""
    last = video.shape[1] - 1
    if start + length <= last + 1:
        return video[:, start:start + length]  # a view: no gather, no index tensor
    index = torch.arange(start, start + length, device=video.device).clamp(max=last)
    return video[:, index]


def check_controls(controls, model: WanDiT, vae) -> None:
    """Raise ValueError unless `controls` is a sequence of Control that this model and VAE can use."""
    if isinstance(controls, Control) or not isinstance(controls, (list, tuple)):
        raise ValueError(f"controls must be a list of Control, got {type(controls).__name__}")
    for control in controls:
        if not isinstance(control, Control):
            raise ValueError(f"controls must be Control objects (stream_session.Control), got {type(control).__name__}")
    if controls and not model.has_vace:
        raise ValueError("VACE control was given but the model has no VACE blocks: load a VACE checkpoint "
                         "(or add a VACE module file in the loader)")
    if controls and vae is None:
        raise ValueError("VACE controls need a VAE: connect one to the sampler")


def check_run(model: WanDiT, config: StreamConfig, prompt: torch.Tensor, chunks: int, controls=(), vae=None,
              new_stream: bool = True, replacing: "StreamSession" = None) -> None:
    """Every check a run makes before it touches a stream: settings, prompt, chunk count, controls and, for a
    `new_stream`, memory (counting that of the session it is `replacing`). Raises ValueError / MemoryError."""
    check_config(config)
    check_chunks(chunks)
    check_prompt(prompt, model, config.batch)
    check_controls(controls, model, vae)
    if new_stream:
        check_memory(model, config, reclaimable=0 if replacing is None else replacing.nbytes)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to a CUDA device without stalling the host (pinned, non-blocking); else a plain .to."""
    if tensor is None or tensor.device == device:
        return tensor
    if tensor.device.type == "cpu" and device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@dataclass
class _Staged:
    """A control's inputs for one call, on the device: its frames/mask cut to the call's pixel frames."""

    frames: torch.Tensor
    mask: torch.Tensor
    first_frame: torch.Tensor
    last_frame: torch.Tensor
    offset: int  # pixel frame of the stream (or of the call, for timing 'call') where the cut starts


class StreamSession:
    """A WanStream with its prompt, controls (each with its own VACE context builder) and references."""

    def __init__(self, model: WanDiT, config: StreamConfig, vae=None):
        check_config(config)
        check_memory(model, config)  # before allocating: a clear refusal instead of an allocator error
        self.stream = WanStream(model, config)
        self.config, self.vae = config, vae
        self._states = []  # one per control of the last run (see _claim)
        self._prompt = None

    @property
    def chunks_done(self) -> int:
        """Chunks generated so far."""
        return self.stream.chunks_done

    @property
    def nbytes(self) -> int:
        """Bytes this stream holds: KV cache, latent history, text K/V, VACE encoder caches (not the models)."""
        return state_nbytes(self)

    def set_prompt(self, text: torch.Tensor) -> None:
        """Use this prompt from the next chunk on (a no-op when it is unchanged)."""
        if not isinstance(text, torch.Tensor):
            check_prompt(text, self.stream.model, self.config.batch)
        if self._prompt is None or self._prompt.shape != text.shape or not torch.equal(self._prompt, text):
            self.stream.set_prompt(text)
            self._prompt = text.clone()

    def set_seed(self, seed: int) -> None:
        """Draw the noise from `seed` from the next chunk on; the video continues (nothing restarts)."""
        self.stream.set_seed(seed)

    def use_model(self, model: WanDiT) -> None:
        """Continue with another copy of the same weights (e.g. the model was loaded again)."""
        self.stream.use_model(model)

    def use_vae(self, vae) -> None:
        """Encode controls with this VAE from now on (controls restart their encoder streams)."""
        if not same_weights(vae, self.vae):
            self.vae = vae
            self._states.clear()

    def _window_fingerprint(self, control: Control, chunk: int):
        """The raw control frames / mask a 'stream'-timed control feeds chunk `chunk` ('call' timing: None)."""
        if control.timing == "call":
            return None
        start, length = pixel_frame_start(chunk, self.config.chunk_frames), pixel_frames_for_chunk(chunk, self.config.chunk_frames)
        return tuple(_fingerprint(None if video is None else _window(video, start, length))
                     for video in (control.frames, control.mask))

    def _claim(self, controls) -> list:
        """Each control's state, by identity rather than chain position: a state continues only for a control of
        the same kind whose frames at the previous chunk are the ones it encoded ('call' timing: the same kind,
        in chain order); any other control joins the stream afresh (VaceContextBuilder's start_chunk path)."""
        if self.vae is None:
            raise ValueError("VACE controls need a VAE: connect one to the sampler")
        chunk, c = self.stream.chunks_done, self.config
        free = [state for state in self._states if state.builder.chunks == chunk]
        claimed = []
        for control in controls:
            kind = _kind(control)
            previous = self._window_fingerprint(control, chunk - 1) if chunk > 0 else None
            state = next((s for s in free if s.kind == kind and s.last_window == previous), None)
            if state is None:
                state = _ControlState(VaceContextBuilder(self.vae, c.height, c.width, c.chunk_frames, c.batch,
                                                         start_chunk=chunk, mask_time=c.vace_mask_time), kind, previous)
            else:
                free.remove(state)
            claimed.append(state)
        # unclaimed states stay until the run succeeds: a failed run must not change what the next one continues
        self._states = claimed + [s for s in self._states if all(s is not t for t in claimed)]
        return claimed

    def _reference(self, state: _ControlState, images: torch.Tensor):
        """The control's VaceReference, encoded again only when its images change."""
        images_then, reference = state.references
        if images_then is None or images_then.shape != images.shape or not torch.equal(images_then, images):
            reference = VaceReference(self.stream, state.builder.reference_latents(images))
            state.references = (images, reference)
        return reference

    def _stage(self, control: Control, call_start: int, chunks: int) -> _Staged:
        """Move what this call needs of a control to the device once (the chunk loop then never waits on the host)."""
        c, device = self.config, self.stream.device
        offset = 0 if control.timing == "call" else call_start
        length = pixel_frame_start(self.stream.chunks_done + chunks, c.chunk_frames) - call_start
        cut = lambda video: None if video is None else to_device(_window(video, offset, length), device)  # noqa: E731
        return _Staged(cut(control.frames), cut(control.mask), to_device(control.first_frame, device),
                       to_device(control.last_frame, device), offset)

    def _chunk_controls(self, controls, states, staged, references, call_start: int, last_in_call: bool) -> list:
        c, inputs = self.config, []
        chunk = self.stream.chunks_done
        for control, state, inputs_on_device, reference in zip(controls, states, staged, references):
            builder = state.builder
            length = builder.frames_needed()
            start = pixel_frame_start(chunk, c.chunk_frames) - (call_start if control.timing == "call" else 0)
            start -= inputs_on_device.offset
            frames = mask = None
            if inputs_on_device.frames is not None:
                frames = fit_video(_window(inputs_on_device.frames, start, length), c.height, c.width)
            if inputs_on_device.mask is not None:
                mask = fit_video(_window(inputs_on_device.mask, start, length), c.height, c.width)
            first = inputs_on_device.first_frame if chunk == 0 else None
            last = inputs_on_device.last_frame if last_in_call else None
            if first is not None or last is not None:
                fit = lambda image: fit_video(image[:, None], c.height, c.width)[:, 0]  # noqa: E731
                frames, mask = frame_reference_control(length, None if first is None else fit(first),
                                                       None if last is None else fit(last), frames, mask)
            batch = lambda x: None if x is None else x[None].expand(c.batch, -1, -1, -1, -1)  # noqa: E731
            context = builder.context_for_chunk(batch(frames), batch(mask))
            inputs.append(VaceInput(context, control.strength, reference))
        return inputs

    @torch.inference_mode()
    def generate(self, chunks: int, controls=(), on_step=None, prompts=None, on_chunk=None) -> torch.Tensor:
        """Continue the stream by `chunks` chunks; normalised latents [B, 16, chunks*F, h, w] (float32).

        prompts: a PromptSchedule; each chunk switches to the prompt its index falls in (with the KV re-cache).
        on_chunk(latents): called with each chunk's latents once it is committed (e.g. for a preview).
        """
        check_chunks(chunks)
        check_controls(controls, self.stream.model, self.vae)
        call_start = pixel_frame_start(self.stream.chunks_done, self.config.chunk_frames)
        states = self._claim(controls) if controls else []
        staged = [self._stage(control, call_start, chunks) for control in controls]
        references = [None if control.references is None else self._reference(state, control.references)
                      for state, control in zip(states, controls)]  # compared once per call, not per chunk
        out = []
        try:
            for i in range(chunks):
                scheduled = None if prompts is None else prompts.at(self.stream.chunks_done)
                if scheduled is not None:
                    self.set_prompt(scheduled)
                vace = self._chunk_controls(controls, states, staged, references, call_start,
                                            last_in_call=i == chunks - 1)
                out.append(self.stream.next_chunk(vace, on_step))
                for state in states:
                    state.builder.commit()
                if on_chunk is not None:
                    on_chunk(out[-1])
        finally:  # once per call, not per chunk: what the last committed chunk encoded, for the next call's claim
            for state, control in zip(states, controls):
                if state.builder.chunks > 0:
                    state.last_window = self._window_fingerprint(control, state.builder.chunks - 1)
        self._states = states  # controls left out of this run broke off their encoder streams
        return torch.cat(out, dim=2)

    @torch.inference_mode()
    def prefill_video(self, video: torch.Tensor) -> int:
        """Start a fresh stream from an existing clip [3, T, H, W] in [-1, 1], so generation continues it.

        The clip is fitted to the stream size, encoded with the session's VAE chunk by chunk and appended
        with `WanStream.prefill`. A stream takes 9 + 12k frames, so the clip's last 9 + 12k frames are used
        (older frames are dropped); returns that number. A failed prefill leaves the stream empty.
        """
        if self.vae is None:
            raise ValueError("prefilling a stream from a clip needs a VAE to encode it: connect one to the sampler")
        if self.stream.chunks_done:
            raise ValueError("prefill starts a stream from a clip, but this stream already has chunks; reset it")
        if video.ndim != 4 or video.shape[0] != 3:
            raise ValueError(f"the clip to prefill must be a video [3, frames, height, width], got {tuple(video.shape)}")
        first, later = pixel_frames_for_chunk(0, self.config.chunk_frames), pixel_frames_for_chunk(1, self.config.chunk_frames)
        if video.shape[1] < first:
            raise ValueError(f"the clip to continue has {video.shape[1]} frames; a stream needs at least {first}")
        used = pixel_frame_start(prefill_chunks(video.shape[1], self.config.chunk_frames), self.config.chunk_frames)
        if video.device.type == "cpu":
            check_finite(video, "the clip to prefill")
        video = video[:, video.shape[1] - used:]
        cache = self.vae.new_encoder_cache()
        try:
            for start in [0] + list(range(first, used, later)):
                length = first if start == 0 else later
                frames = fit_video(video[:, start:start + length].to(self.stream.device), self.config.height,
                                   self.config.width)
                batch = frames[None].expand(self.config.batch, -1, -1, -1, -1).to(self.vae.dtype)
                self.stream.prefill(self.vae.encode(batch, cache).float())
        except BaseException:
            self.reset()
            raise
        return used

    def reset(self) -> None:
        """Start the video over with the same model, prompt and settings."""
        self.stream.reset()
        self._states.clear()
