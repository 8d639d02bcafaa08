"""The stylize engine against diffusers' DreamLiteMobilePipeline and a plain reference loop of the method."""

import cv2
import numpy as np
import pytest
import torch
from diffusers import DreamLiteMobilePipeline
from dreamlite_tiny import build_tiny_dreamlite, random_frames
from dreamlite_tiny import one_torch_thread  # noqa: F401 (an autouse fixture)
from PIL import Image

from streamvace.models.dreamlite.loader import load_dreamlite
from streamvace.models.dreamlite.pipeline import DreamLiteStylizer, StylizeOptions, flow_match_shift, resize_frames
from streamvace.models.dreamlite.temporal_lllite import TemporalLLLite

SIZE = 64
PROMPT = "an oil painting style"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_dreamlite(str(tmp_path_factory.mktemp("DreamLite-mobile")))


@pytest.fixture()
def models(folder):
    return load_dreamlite(folder, dtype=torch.float32)


def _adapter(models, seed=0):
    adapter = TemporalLLLite(models.unet, "down_blocks", cond_emb_dim=8, mlp_dim=16)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return adapter


def _run(models, frames, batch, options, adapter=None, seed=0, calls=None):
    stylizer = DreamLiteStylizer(models, SIZE, SIZE, batch, lllite=adapter, flow_workers=2)
    stream = stylizer.new_stream(seed)
    try:
        if calls is None:
            return stylizer.stylize(frames, stream, options)
        outputs, start = [], 0
        for count, call_options in calls:
            outputs.append(stylizer.stylize(frames[start:start + count], stream, call_options))
            start += count
        return torch.cat(outputs)
    finally:
        stylizer.close()


class _MobilePipelineWithOurTextEncoder(DreamLiteMobilePipeline):
    """diffusers' pipeline with encode_prompt swapped for ours (checked against transformers in test_dreamlite_text)."""

    our_embeddings = None

    def encode_prompt(self, mode, prompts, device, dtype, image=None, **kwargs):
        assert mode == "edit"
        return self.our_embeddings


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_single_frame_matches_diffusers_dreamlite_mobile_pipeline(models, steps):
    frame = random_frames(1, SIZE)
    ours = _run(models, frame, 1, StylizeOptions(PROMPT, steps=steps), seed=7)

    pipeline = _MobilePipelineWithOurTextEncoder(
        text_encoder=models.prompt_encoder.model, tokenizer=models.prompt_encoder.tokenizer,
        processor=models.prompt_encoder.tokenizer, vae=models.vae, unet=models.unet, scheduler=models.scheduler)
    pixels = frame.permute(0, 3, 1, 2) * 2 - 1
    pipeline.our_embeddings = models.prompt_encoder.encode(PROMPT, pixels)
    image = Image.fromarray((frame[0].numpy() * 255).round().astype(np.uint8))
    expected = pipeline(prompt=PROMPT, image=image, height=SIZE, width=SIZE, num_inference_steps=steps,
                        generator=torch.Generator().manual_seed(7), output_type="pt").images
    torch.testing.assert_close(ours, expected.permute(0, 2, 3, 1), atol=2e-5, rtol=1e-4)


def test_batching_is_exact_without_the_adapter(models):
    frames = random_frames(10, SIZE)
    options = StylizeOptions(PROMPT, steps=2, fixed_noise=True)
    batched = _run(models, frames, 4, options)
    single = _run(models, frames, 1, options)
    assert batched.shape == (10, SIZE, SIZE, 3)
    torch.testing.assert_close(batched, single, atol=2e-5, rtol=1e-4)


def _reference_stream(models, adapter, frames, batch, options_per_batch, seed=0):
    """The method written plainly: one batch at a time, no caching beyond the documented refresh rules."""
    generator = torch.Generator().manual_seed(seed)
    encoder, scheduler, vae, unet = models.prompt_encoder, models.scheduler, models.vae, models.unet
    text = cond = prev_output = prev_gray = fixed = None
    text_age = cond_age = 0
    outputs = []
    if adapter is not None:
        adapter.allocate(batch, SIZE, SIZE)
        adapter.attach()
    for index, start in enumerate(range(0, len(frames), batch)):
        options = options_per_batch[index]
        chunk = frames[start:start + batch]
        real = len(chunk)
        chunk = torch.cat([chunk, chunk[-1:].expand(batch - real, -1, -1, -1)])
        pixels = chunk.permute(0, 3, 1, 2) * 2 - 1
        if text is None or text[0] != options.prompt or text_age >= options.te_refresh_every:
            embeds, mask = encoder.encode(options.prompt, pixels[:1] if options.te_batch_one else pixels)
            text, text_age = (options.prompt, embeds.expand(batch, -1, -1), mask.expand(batch, -1)), 0
        text_age += 1
        grays = [cv2.cvtColor((f.numpy() * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2GRAY) for f in chunk]
        if adapter is not None:
            if cond is None or cond_age >= options.cond_refresh_every:
                if prev_output is None:
                    cond = pixels
                else:
                    warped = []
                    for gray in grays:
                        flow = cv2.calcOpticalFlowFarneback(prev_gray, gray, None, 0.5, 3, 15, 3, 5, 1.2, 0)
                        ys, xs = np.mgrid[:SIZE, :SIZE].astype(np.float32)
                        warped.append(cv2.remap(prev_output, xs - flow[..., 0], ys - flow[..., 1],
                                                cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
                    cond = torch.from_numpy(np.stack(warped)).permute(0, 3, 1, 2)
                adapter.set_cond_image(cond)
                cond_age = 0
            cond_age += 1
            adapter.set_multiplier(options.lllite_strength)
        shape = (batch, 4, SIZE // 8, SIZE // 8)
        if options.fixed_noise:
            fixed = torch.randn((1, *shape[1:]), generator=generator).expand(shape) if fixed is None else fixed
            latents = fixed
        else:
            latents = torch.randn(shape, generator=generator)
        source = vae.encode(pixels).latents
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / options.steps, options.steps),
                                mu=flow_match_shift((SIZE // 8) ** 2 // 4, scheduler.config))
        with torch.no_grad():
            for t in scheduler.timesteps:
                velocity = unet(torch.cat([latents, source], dim=3), t.expand(batch), encoder_hidden_states=text[1],
                                encoder_attention_mask=text[2], added_cond_kwargs={"time_ids": torch.tensor(
                                    [[SIZE, SIZE]] * batch, dtype=torch.float32)}, return_dict=False)[0]
                latents = scheduler.step(velocity[..., :SIZE // 8], t, latents, return_dict=False)[0]
            images = vae.decode(latents / vae.config.scaling_factor).sample.clamp(-1, 1)
        prev_output = images[real - 1].permute(1, 2, 0).numpy().copy()
        prev_gray = grays[real - 1]
        outputs.append(((images[:real] + 1) * 0.5).permute(0, 2, 3, 1))
    if adapter is not None:
        adapter.detach()
    return torch.cat(outputs)


def test_exact_settings_match_the_reference_loop(models):
    frames = random_frames(7, SIZE, seed=3)
    options = StylizeOptions(PROMPT, steps=2)
    ours = _run(models, frames, 3, options, adapter=_adapter(models), seed=5)
    expected = _reference_stream(models, _adapter(models), frames, 3, [options] * 3, seed=5)
    torch.testing.assert_close(ours, expected, atol=3e-4, rtol=1e-3)  # cv2.remap interpolates in 1/32 px


def test_refresh_modes_are_exactly_their_documented_approximation(models):
    frames = random_frames(12, SIZE, seed=4)
    options = StylizeOptions(PROMPT, te_refresh_every=2, te_batch_one=True, cond_refresh_every=2, fixed_noise=True,
                             lllite_strength=0.7)
    ours = _run(models, frames, 3, options, adapter=_adapter(models), seed=6)
    expected = _reference_stream(models, _adapter(models), frames, 3, [options] * 4, seed=6)
    torch.testing.assert_close(ours, expected, atol=3e-4, rtol=1e-3)
    exact = _run(models, frames, 3, StylizeOptions(PROMPT, fixed_noise=True, lllite_strength=0.7),
                 adapter=_adapter(models), seed=6)
    assert (exact - ours).abs().max() > 1e-4  # the approximations are real, not no-ops


def test_stream_continues_across_calls_and_a_prompt_change_refreshes_the_text(models):
    frames = random_frames(11, SIZE, seed=5)
    first = StylizeOptions(PROMPT, te_refresh_every=100, cond_refresh_every=2)
    second = StylizeOptions("a watercolor wash", te_refresh_every=100, cond_refresh_every=2)
    ours = _run(models, frames, 2, None, adapter=_adapter(models), seed=1, calls=[(5, first), (6, second)])
    # the 5-frame call pads its last batch, so the second call starts on a fresh batch boundary
    expected = torch.cat([
        _reference_stream(models, _adapter(models), frames, 2, [first] * 6, seed=1)[:5],
        _continued_reference(models, frames, first, second)])
    torch.testing.assert_close(ours, expected, atol=3e-4, rtol=1e-3)


def _continued_reference(models, frames, first, second):
    """Reference for the second call: the same stream state, the padded frame included, then the new prompt."""
    padded = torch.cat([frames[:5], frames[4:5], frames[5:]])
    options = [first] * 3 + [second] * 3
    return _reference_stream(models, _adapter(models), padded, 2, options, seed=1)[6:]


def test_a_failed_call_leaves_the_stream_as_it_was(models):
    frames = random_frames(8, SIZE, seed=6)
    options = StylizeOptions(PROMPT, cond_refresh_every=3)
    stylizer = DreamLiteStylizer(models, SIZE, SIZE, 2, lllite=_adapter(models), flow_workers=2)
    try:
        stream = stylizer.new_stream(3)
        stylizer.stylize(frames[:4], stream, options)
        before = (stream.frames_done, stream.cond_age, stream.generator.get_state().clone())

        def cancel_after_first_batch(_):
            raise KeyboardInterrupt("cancelled")
        with pytest.raises(KeyboardInterrupt):
            stylizer.stylize(frames[4:], stream, options, on_batch=cancel_after_first_batch)
        assert (stream.frames_done, stream.cond_age) == before[:2]
        assert torch.equal(stream.generator.get_state(), before[2])
        with pytest.raises(ValueError, match="resize"):
            stylizer.stylize(random_frames(2, 96), stream, options)
        resumed = stylizer.stylize(frames[4:], stream, options)
    finally:
        stylizer.close()
    uninterrupted = _run(models, frames, 2, options, adapter=_adapter(models), seed=3)
    torch.testing.assert_close(resumed, uninterrupted[4:], atol=1e-5, rtol=1e-5)


def test_streams_sharing_one_adapter_keep_their_own_conditions(models):
    clip_a, clip_b = random_frames(6, SIZE, seed=7), random_frames(6, SIZE, seed=8)
    options = StylizeOptions(PROMPT, cond_refresh_every=3)
    stylizer = DreamLiteStylizer(models, SIZE, SIZE, 2, lllite=_adapter(models), flow_workers=2)
    try:
        a, b = stylizer.new_stream(1), stylizer.new_stream(2)
        interleaved_a, interleaved_b = [], []
        for start in range(0, 6, 2):
            interleaved_a.append(stylizer.stylize(clip_a[start:start + 2], a, options))
            interleaved_b.append(stylizer.stylize(clip_b[start:start + 2], b, options))
    finally:
        stylizer.close()
    torch.testing.assert_close(torch.cat(interleaved_a), _run(models, clip_a, 2, options, _adapter(models), seed=1))
    torch.testing.assert_close(torch.cat(interleaved_b), _run(models, clip_b, 2, options, _adapter(models), seed=2))


def test_adapter_at_strength_zero_is_the_bare_model(models):
    frames = random_frames(4, SIZE, seed=9)
    bare = _run(models, frames, 2, StylizeOptions(PROMPT))
    off = _run(models, frames, 2, StylizeOptions(PROMPT, lllite_strength=0.0), adapter=_adapter(models))
    assert torch.equal(bare, off)


def test_compiled_unet_and_text_layers_give_the_eager_result(models):
    frames = random_frames(4, SIZE, seed=10)
    options = StylizeOptions(PROMPT, cond_refresh_every=2)
    eager = _run(models, frames, 2, options, adapter=_adapter(models), seed=4)
    torch._dynamo.reset()
    stylizer = DreamLiteStylizer(models, SIZE, SIZE, 2, lllite=_adapter(models), compile_unet="default",
                                 compile_text="default", compile_backend="eager", flow_workers=2)
    try:
        compiled = stylizer.stylize(frames, stylizer.new_stream(4), options)
    finally:
        stylizer.close()
        for layer in models.prompt_encoder.model.language_model.layers:
            layer._compiled_call_impl = None
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


def test_bad_input_is_a_clear_error(models):
    with pytest.raises(ValueError, match="multiples of 32"):
        DreamLiteStylizer(models, 100, 64, 2)
    stylizer = DreamLiteStylizer(models, SIZE, SIZE, 2, flow_workers=1)
    try:
        stream = stylizer.new_stream()
        for options, message in ((StylizeOptions(PROMPT, steps=5), "steps must be 1 to 4"),
                                 (StylizeOptions("  "), "prompt is empty"),
                                 (StylizeOptions(PROMPT, cond_refresh_every=0), "at least 1")):
            with pytest.raises(ValueError, match=message):
                stylizer.stylize(random_frames(2, SIZE), stream, options)
        with pytest.raises(ValueError, match=r"expected frames \[T, H, W, 3\]"):
            stylizer.stylize(torch.zeros(2, SIZE, SIZE), stream, StylizeOptions(PROMPT))
        assert stream.frames_done == 0
    finally:
        stylizer.close()


def test_resize_frames_fits_any_video_to_the_model_size():
    frames = random_frames(2, 96)
    assert resize_frames(frames, 64, 32).shape == (2, 32, 64, 3)
    assert resize_frames(frames, 96, 96) is frames


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the side-stream pipelining needs a CUDA device")
def test_cuda_pipelined_stream_matches_the_cpu_result(folder):
    frames = random_frames(9, SIZE, seed=2)
    options = StylizeOptions(PROMPT, te_refresh_every=2, cond_refresh_every=2)
    cpu_models = load_dreamlite(folder, dtype=torch.float32)
    gpu_models = load_dreamlite(folder, device="cuda", dtype=torch.float32)
    cpu = _run(cpu_models, frames, 2, options, adapter=_adapter(cpu_models), seed=0)
    stylizer = DreamLiteStylizer(gpu_models, SIZE, SIZE, 2, lllite=_adapter(gpu_models))
    try:
        gpu = stylizer.stylize(frames, stylizer.new_stream(0), options)
    finally:
        stylizer.close()
    assert gpu.shape == cpu.shape and torch.isfinite(gpu).all()  # noise comes from a CUDA generator: not equal
