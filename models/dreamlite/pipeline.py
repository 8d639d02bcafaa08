"""DreamLite-mobile video stylization: the streaming loop.

Edit mode as in DreamLiteMobilePipeline (the source latent concatenated along the width, the left half of
the prediction kept, flow-matching Euler on the pipeline's own sigmas), driven batch by batch for a video
stream (seed 003): frames are stylized B at a time, the Qwen3-VL text encoder and the VAE encode of batch
n+1 run on a side CUDA stream while the U-Net and the decode of batch n run on the main stream, and the
Temporal-LLLite condition (previous output warped by Farnebäck flow on the inputs, computed on CPU worker
threads) is refreshed every `cond_refresh_every` batches. On the CPU the same loop runs sequentially.

Documented approximations, all off by default: `te_refresh_every` > 1 reuses the text embedding of an
earlier batch, `te_batch_one` encodes only the batch's first frame, `cond_refresh_every` > 1 reuses an
earlier LLLite condition, and with B > 1 every frame of a batch is conditioned on the last output of the
previous batch. `fixed_noise` starts every frame from the same noise.
"""

import contextlib
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import torch

from .loader import DreamLiteModels
from ..checks import check_values
from ..wan.sampler import chunk_seed
from ..flow_warp import FlowWorkers, gray_uint8, wait_flows, warp_backward

SIZE_MULTIPLE = 32  # VAE /8 times the U-Net's two downsamples; also the deepest LLLite stride


@dataclass(frozen=True)
class StylizeOptions:
    """The per-call knobs of a stylized stream (they may change between calls without a reset)."""

    prompt: str
    steps: int = 1
    te_refresh_every: int = 1
    te_batch_one: bool = False
    cond_refresh_every: int = 1
    lllite_strength: float = 1.0
    fixed_noise: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the bad knob and its allowed range."""
        if not self.prompt.strip():
            raise ValueError("the stylize prompt is empty: describe the style, e.g. 'an oil painting style'")
        if not 1 <= self.steps <= 4:
            raise ValueError(f"steps must be 1 to 4 (DreamLite-mobile is distilled to 4), got {self.steps}")
        for name in ("te_refresh_every", "cond_refresh_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 (1 = every batch), got {getattr(self, name)}")


@dataclass
class StylizeStream:
    """Everything one stylized stream carries from call to call (and from queue run to queue run)."""

    generator: torch.Generator
    seed: int = 0  # the seed the generator was last seeded from (see DreamLiteStylizer.stylize's `seed`)
    token: object = field(default_factory=object)  # identifies the stream in the shared LLLite buffers
    frames_done: int = 0
    prev_gray: np.ndarray = None  # last input frame, grayscale, for the next flow
    prev_output: torch.Tensor = None  # last stylized frame [1, 3, H, W] in [-1, 1]
    text: tuple = None  # (prompt, embeddings [B, L, D], mask [B, L])
    text_age: int = 0
    cond_image: torch.Tensor = None  # the frames the LLLite condition was last encoded from
    cond_age: int = 0
    noise: torch.Tensor = None  # the fixed noise, drawn once


@dataclass
class _Prefetched:
    """One batch after the side-stream work: source latents, text embeddings, flow futures."""

    host: torch.Tensor  # keeps the pinned frames alive until their asynchronous upload is done
    pixels: torch.Tensor
    latents: torch.Tensor
    text: tuple
    cond_due: bool
    flows: list
    real: int
    ready: object


def check_frames(frames: torch.Tensor, alpha: bool = False) -> None:
    """Raise ValueError unless `frames` is a finite IMAGE batch [T, H, W, 3] (or 4 with `alpha`) in [0, 1]
    (one host sync)."""
    channels = (3, 4) if alpha else (3,)
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[-1] not in channels \
            or frames.shape[0] == 0:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        hint = (" (channels first? ComfyUI IMAGE is channels-last)" if isinstance(frames, torch.Tensor)
                and frames.ndim == 4 and frames.shape[1] in channels else "")
        raise ValueError(f"expected frames [T, H, W, 3] (an IMAGE batch, RGB) with at least one frame, got "
                         f"{shape}{hint}")
    check_values(frames, "the frames to stylize", 0.0, 1.0, "IMAGE frames are RGB in [0, 1]")


def resize_frames(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize IMAGE frames [T, H, W, 3] in [0, 1] to width x height on the CPU (area filter when shrinking)."""
    if frames.shape[1:3] == (height, width):
        return frames
    shrink = frames.shape[1] * frames.shape[2] > width * height
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    resized = [cv2.resize(frame, (width, height), interpolation=interpolation)
               for frame in frames.float().cpu().numpy()]
    return torch.from_numpy(np.stack(resized))


def flow_match_shift(image_seq_len: int, config) -> float:
    """The dynamic-shift mu DreamLiteMobilePipeline passes to the scheduler (diffusers calculate_shift)."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.16)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return image_seq_len * slope + base_shift - slope * base_len


class DreamLiteStylizer:
    """The stylize engine for one model, one frame size and one batch size (all shapes static)."""

    def __init__(self, models: DreamLiteModels, width: int = 512, height: int = 512, batch_size: int = 8,
                 lllite=None, compile_unet: str = None, compile_text: str = None, compile_backend: str = "inductor",
                 flow_workers: int = 8):
        if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE or width <= 0 or height <= 0:
            raise ValueError(f"DreamLite stylize needs a width and height that are positive multiples of "
                             f"{SIZE_MULTIPLE}, got {width}x{height}; resize the frames (e.g. to 512x512)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.models, self.width, self.height, self.batch_size = models, width, height, batch_size
        self.device, self.dtype = models.device, models.dtype
        self.lllite = lllite
        if lllite is not None:
            lllite.to(self.device, self.dtype)
            lllite.attach()
        self.unet = models.unet
        if compile_unet:  # after attaching LLLite, so the adapter is part of the one graph
            self.unet = torch.compile(models.unet, mode=compile_unet, backend=compile_backend,
                                      fullgraph=False, dynamic=False)
        self._compiled = bool(compile_unet)
        if compile_text:  # opt-in: fuses the 28 decoder layers (one compiled graph serves them all)
            for layer in models.prompt_encoder.model.language_model.layers:
                layer.compile(mode=compile_text, backend=compile_backend, dynamic=False)
        self._cuda = self.device.type == "cuda"
        self._side = torch.cuda.Stream(self.device) if self._cuda else None
        self._flows = FlowWorkers(flow_workers)
        self._time_ids = torch.tensor([[width, height]] * batch_size, device=self.device, dtype=self.dtype)
        self._schedules = {}
        self.step_events = []  # (start, end) CUDA events around the U-Net steps, when profile_steps is set
        self.profile_steps = False

    def new_stream(self, seed: int = 0) -> StylizeStream:
        """A fresh stream whose noise comes from `seed`."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed)
        return StylizeStream(generator=generator, seed=seed)

    def schedule(self, steps: int) -> list:
        """[(timestep [B], sigma, next sigma)] for `steps` steps, from the model's scheduler, cached."""
        if steps not in self._schedules:
            scheduler = self.models.scheduler
            latent_tokens = (self.height // 8) * (self.width // 8) // 4
            sigmas = np.linspace(1.0, 1.0 / steps, steps)
            scheduler.set_timesteps(sigmas=sigmas, mu=flow_match_shift(latent_tokens, scheduler.config), device="cpu")
            times, sigmas = scheduler.timesteps.tolist(), scheduler.sigmas.tolist()
            self._schedules[steps] = [
                (torch.full((self.batch_size,), times[i], device=self.device, dtype=self.dtype),
                 sigmas[i], sigmas[i + 1]) for i in range(steps)]
        return self._schedules[steps]

    def stylize(self, frames: torch.Tensor, stream: StylizeStream, options: StylizeOptions,
                on_batch=None, seed: int = None) -> torch.Tensor:
        """Stylize IMAGE frames [T, H, W, 3] in [0, 1] and continue `stream`; returns [T, H, W, 3] on the CPU.

        The stream is only updated when every frame succeeded. `on_batch(frames)` is called after each
        batch (progress, cancellation: an exception there leaves the stream as it was). A `seed` other than
        the stream's draws this call's noise (and a new fixed noise) from it; the stream goes on, nothing restarts.
        """
        options.validate()
        check_frames(frames)  # before anything changes: a NaN frame would poison every later frame
        if tuple(frames.shape[1:3]) != (self.height, self.width):
            raise ValueError(f"frames are {frames.shape[2]}x{frames.shape[1]} but this stylizer was built for "
                             f"{self.width}x{self.height}; resize them first (resize_frames)")
        count, batch = frames.shape[0], self.batch_size
        frames = frames.float().cpu().contiguous()
        padded = torch.cat([frames, frames[-1:].expand(-count % batch, -1, -1, -1)]) if count % batch else frames
        if self.lllite is not None:
            self.lllite.allocate(batch, self.height, self.width)
        work, generator_state = replace(stream), stream.generator.get_state()
        if seed is not None and int(seed) != stream.seed:
            # mixed with the position, so returning to an earlier seed never replays the stream's first noise
            work.seed, work.noise = int(seed), None
            work.generator.manual_seed(chunk_seed(work.seed, work.frames_done))
        try:
            result = self._run([padded[i:i + batch] for i in range(0, len(padded), batch)], count, work,
                               options, on_batch)
        except BaseException:
            stream.generator.set_state(generator_state)
            if self.lllite is not None and self.lllite.cond_owner is stream.token:
                self.lllite.cond_owner = None  # its buffers hold uncommitted conditions
            raise
        stream.__dict__.update(work.__dict__)
        return result

    def _run(self, batches, count, work, options, on_batch) -> torch.Tensor:
        result = torch.empty(count, self.height, self.width, 3)
        pending = self._prefetch(batches[0], min(self.batch_size, count), work, options)
        for index in range(len(batches)):
            current = pending
            images = self._denoise(current, work, options)
            if index + 1 < len(batches):  # enqueue batch n+1's side work before waiting for batch n
                real = min(self.batch_size, count - (index + 1) * self.batch_size)
                pending = self._prefetch(batches[index + 1], real, work, options)
            start = index * self.batch_size
            self._collect(images[: current.real], result[start: start + current.real])
            work.frames_done += current.real
            if on_batch is not None:
                on_batch(current.real)
        return result

    def _lllite_active(self, options) -> bool:
        return self.lllite is not None and options.lllite_strength != 0.0

    def _side_stream(self):
        return torch.cuda.stream(self._side) if self._cuda else contextlib.nullcontext()

    def _prefetch(self, host: torch.Tensor, real: int, work: StylizeStream, options) -> _Prefetched:
        """Start the flows on CPU threads, then text encode + VAE encode on the side stream."""
        host_np = host.numpy()
        cond_due = self._lllite_active(options) and (work.cond_image is None
                                                     or work.cond_age >= options.cond_refresh_every)
        flows = None
        if cond_due and work.prev_output is not None:
            flows = self._flows.flows_from(work.prev_gray, host_np)
        work.prev_gray = gray_uint8(host_np[real - 1])
        text_due = (work.text is None or work.text[0] != options.prompt
                    or work.text_age >= options.te_refresh_every)
        main = torch.cuda.current_stream(self.device) if self._cuda else None
        ready = None
        with torch.no_grad(), self._side_stream():
            if self._cuda:
                host = host.pin_memory()
            pixels = host.to(self.device, non_blocking=True).permute(0, 3, 1, 2).to(self.dtype) * 2.0 - 1.0
            if text_due:
                source = pixels[:1] if options.te_batch_one else pixels
                embeds, mask = self.models.prompt_encoder.encode(options.prompt, source)
                embeds = embeds.to(self.dtype).expand(self.batch_size, -1, -1).contiguous()
                work.text, work.text_age = (options.prompt, embeds, mask.expand(self.batch_size, -1).contiguous()), 0
            latents = self.models.vae.encode(pixels).latents
            if self._cuda:
                ready = torch.cuda.Event()
                ready.record(self._side)
                for tensor in (pixels, latents, *work.text[1:]):
                    tensor.record_stream(main)  # made on the side stream, read on the main stream
        work.text_age += 1
        return _Prefetched(host, pixels, latents, work.text, cond_due, flows, real, ready)

    def _set_condition(self, batch: _Prefetched, work: StylizeStream, options) -> None:
        if batch.cond_due:
            if work.prev_output is None:
                cond = batch.pixels  # the stream's first batch: condition on the inputs themselves
            else:
                flow = torch.from_numpy(wait_flows(batch.flows))
                if self._cuda:
                    flow = flow.pin_memory()
                flow = flow.to(self.device, non_blocking=True)
                cond = warp_backward(work.prev_output, flow)
            self.lllite.set_cond_image(cond, owner=work.token)
            work.cond_image, work.cond_age = cond, 0
        elif self.lllite.cond_owner is not work.token:
            self.lllite.set_cond_image(work.cond_image, owner=work.token)  # another stream used the buffers
        work.cond_age += 1
        self.lllite.set_multiplier(options.lllite_strength)

    def _noise(self, work: StylizeStream, options) -> torch.Tensor:
        shape = (self.batch_size, self.models.vae.config.latent_channels, self.height // 8, self.width // 8)
        if not options.fixed_noise:
            return torch.randn(shape, generator=work.generator, device=self.device, dtype=torch.float32)
        if work.noise is None:
            one = torch.randn((1, *shape[1:]), generator=work.generator, device=self.device, dtype=torch.float32)
            work.noise = one.expand(shape).contiguous()
        return work.noise

    @torch.no_grad()
    def _denoise(self, batch: _Prefetched, work: StylizeStream, options) -> torch.Tensor:
        """U-Net steps and VAE decode of one batch on the main stream; updates the previous output."""
        if batch.ready is not None:
            torch.cuda.current_stream(self.device).wait_event(batch.ready)
        if self._lllite_active(options):
            self._set_condition(batch, work, options)
        elif self.lllite is not None:
            self.lllite.set_multiplier(0.0)
        _, embeds, mask = batch.text
        latents = self._noise(work, options)
        width = latents.shape[-1]
        events = self._step_events()
        for timestep, sigma, next_sigma in self.schedule(options.steps):
            model_input = torch.cat([latents.to(self.dtype), batch.latents], dim=3)
            if self._compiled:  # CUDA-graph modes reuse output memory: each step starts a new generation
                torch.compiler.cudagraph_mark_step_begin()
            velocity = self.unet(model_input, timestep, encoder_hidden_states=embeds, encoder_attention_mask=mask,
                                 added_cond_kwargs={"time_ids": self._time_ids}, return_dict=False)[0]
            # flow-matching Euler in float32, like FlowMatchEulerDiscreteScheduler.step
            latents = latents + (next_sigma - sigma) * velocity[..., :width].float()
        if events is not None:
            events[1].record()
        vae = self.models.vae
        shift = getattr(vae.config, "shift_factor", 0.0) or 0.0
        images = vae.decode(latents.to(self.dtype) / vae.config.scaling_factor + shift).sample.clamp(-1.0, 1.0)
        work.prev_output = images[batch.real - 1: batch.real].clone()
        return images

    def _step_events(self):
        if not (self.profile_steps and self._cuda):
            return None
        events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        events[0].record()
        self.step_events.append(events)
        return events

    def _collect(self, images: torch.Tensor, out: torch.Tensor) -> None:
        """Frames [B, 3, H, W] in [-1, 1] on the device into IMAGE rows [B, H, W, 3] on the CPU.

        A plain device-to-host copy waits for the main stream only: the side stream keeps running.
        """
        out.copy_(((images.float() + 1.0) * 0.5).permute(0, 2, 3, 1))

    def close(self) -> None:
        """Release the flow threads and take the LLLite hooks off the U-Net."""
        self._flows.close()
        if self.lllite is not None:
            self.lllite.detach()


class StylizeModel:
    """A loaded DreamLite-mobile (+ optional Temporal-LLLite) handing out one stylizer per frame and batch size."""

    def __init__(self, models: DreamLiteModels, lllite=None, lllite_report=None, compile_unet: str = None,
                 compile_text: str = None):
        self.models, self.lllite, self.lllite_report = models, lllite, lllite_report
        self.compile_unet, self.compile_text = compile_unet, compile_text
        self._stylizers = {}

    def stylizer(self, width: int, height: int, batch_size: int) -> DreamLiteStylizer:
        """The engine for this frame size and batch size (built once, then reused)."""
        key = (width, height, batch_size)
        if key not in self._stylizers:
            self._stylizers[key] = DreamLiteStylizer(self.models, width, height, batch_size, lllite=self.lllite,
                                                     compile_unet=self.compile_unet, compile_text=self.compile_text)
        return self._stylizers[key]
