"""Bad input, tried as a new user would: every case is a clear error that names the problem and the fix, and
changes nothing. Streams continue exactly as a reference stream that never saw the bad run; files, models
and registries are as they were.
"""

import math
import os
import warnings

import pytest
import torch

from streamvace.models.checkpoint_io import CheckpointError
from streamvace.models.memory import NotEnoughMemoryError
from streamvace.models.vae.stream import EncodeStream
from streamvace.models.vae.tiny_vae import load_tiny_vae
from streamvace.models.vae.wan_vae import load_wan_vae
from streamvace.models.wan.checkpoint import load_wan_model, merge_lora
from streamvace.models.wan.kv_cache import cache_policy
from streamvace.models.wan.stream import StreamConfig, WanStream
from streamvace.models.wan.stream_checks import stream_memory
from streamvace.models.wan.stream_session import Control, StreamSession
from streamvace.nodes import NODE_CLASS_MAPPINGS as NODES
from streamvace.nodes.streams import StreamRegistry, free_streams, registry

from _vae_helpers import random_video, save_weights, tiny_vae_state_dict, wan_vae_state_dict
from wan_tiny import TEXT_DIM, tiny_model

H, W = 32, 48
PROMPT = torch.randn(1, 7, TEXT_DIM, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for folder in ("diffusion_models", "vae", "vae_approx", "loras"):
        (root / folder).mkdir()
    full = tiny_model(vace=True).state_dict()
    save_weights({f"model.diffusion_model.{k}": v for k, v in full.items() if not k.startswith("vace_")},
                 root / "diffusion_models" / "wan_t2v_tiny.safetensors")
    save_weights({k: v for k, v in full.items() if k.startswith("vace_")},
                 root / "diffusion_models" / "vace_module_tiny.safetensors")
    save_weights(wan_vae_state_dict(seed=2), root / "vae" / "wan_vae_tiny.pth")
    save_weights(tiny_vae_state_dict(seed=3), root / "vae_approx" / "taew_tiny.pth")
    return root


@pytest.fixture()
def models(models_dir, monkeypatch):
    monkeypatch.setenv("STREAMVACE_MODELS_DIR", str(models_dir))
    model = NODES["StreamVACEModelLoader"]().load("wan_t2v_tiny.safetensors", "vace_module_tiny.safetensors", "fp32",
                                                  "sdpa")[0]
    vae = NODES["StreamVACELoadWanVAE"]().load("wan_vae_tiny.pth", "fp32")[0]
    yield model, vae
    free_streams()


def _args(model, **overrides):
    args = dict(model=model, positive=[[PROMPT, {}]], stream_id="s", reset=False, width=W, height=H, chunks=1,
                seed=3, cache_policy="longlive", steps="1000", warp_steps=True)
    args.update(overrides)
    return args


_REFERENCE = {}


def _reference_chunks(model, vae=None, control=None):
    """Three chunks of a stream that never saw bad input (computed once per model + control)."""
    key = (id(model), control is not None)
    if key not in _REFERENCE:
        sampler = NODES["StreamVACESampler"]()
        extra = {} if control is None else dict(vae=vae, control=control)
        _REFERENCE[key] = [sampler.sample(**_args(model, stream_id="reference", **extra))[0]["samples"]
                           for _ in range(3)]
        registry("wan").reset("reference")
    return _REFERENCE[key]


# ------------------------------------------------------------------ sampler: a failed run loses nothing

SAMPLER_CASES = [  # (overrides, words the message must contain)
    (dict(width=40), ["width", "multiples of 16", "32 or 48"]),
    (dict(height=20), ["height", "multiples of 16", "16 or 32"]),
    (dict(width=40, reset=True), ["width", "multiples of 16"]),
    (dict(chunks=0), ["chunks", "1 or more"]),
    (dict(chunks=-3), ["chunks", "1 or more"]),
    (dict(positive=[]), ["CONDITIONING", "empty", "CLIPTextEncode"]),
    (dict(positive=[["text", {}]]), ["CONDITIONING", "CLIPTextEncode"]),
    (dict(positive=[[PROMPT[0], {}]]), ["3 dimensions", "batch axis"]),
    (dict(positive=[[torch.randn(7, 7, TEXT_DIM), {}]]), ["batch of 7", "one prompt"]),
    (dict(positive=[[torch.full((1, 7, TEXT_DIM), float("nan")), {}]]), ["prompt", "NaN"]),
    (dict(positive=[[torch.randn(1, 7, 768), {}]]), ["768 features", f"{TEXT_DIM}", "type wan"]),
    (dict(positive=[[torch.randn(1, 0, TEXT_DIM), {}]]), ["no tokens"]),
    (dict(steps="fast"), ["steps", "1000,750,500,250"]),
    (dict(steps="250,500"), ["steps", "decreasing"]),
    (dict(cache_policy="longest"), ["cache policy", "longlive"]),
    (dict(stream_id=""), ["stream id", "main"]),
    (dict(control="not a control"), ["Control"]),
]


@pytest.mark.parametrize("overrides, words", SAMPLER_CASES, ids=[str(list(o.items()))[:60] for o, _ in SAMPLER_CASES])
def test_a_bad_sampler_run_after_good_runs_keeps_the_stream(models, overrides, words):
    model, _ = models
    reference = _reference_chunks(model)
    sampler = NODES["StreamVACESampler"]()
    first = [sampler.sample(**_args(model))[0]["samples"] for _ in range(2)]
    session = registry("wan").get("s")
    with pytest.raises(ValueError) as error:
        sampler.sample(**_args(model, **overrides))
    for word in words:
        assert word.lower() in str(error.value).lower(), str(error.value)
    assert registry("wan").get("s") is session and session.chunks_done == 2
    following = sampler.sample(**_args(model))[0]
    assert following["stream_frame"] == 6
    torch.testing.assert_close(torch.cat(first + [following["samples"]], 2), torch.cat(reference, 2))


def test_a_stream_too_large_for_memory_is_refused_with_the_estimate_and_keeps_the_stream(models, monkeypatch):
    from streamvace.models import memory

    model, _ = models
    sampler = NODES["StreamVACESampler"]()
    sampler.sample(**_args(model))
    session = registry("wan").get("s")
    with monkeypatch.context() as patch:
        patch.setattr(memory, "free_bytes", lambda device: 2 ** 20)  # 1 MiB free
        with pytest.raises(NotEnoughMemoryError, match=r"needs about .*GiB \(KV cache .*only 0\.0 GiB is free on "
                                                       r"cpu.*Lower width / height"):
            sampler.sample(**_args(model, width=2048, height=2048))
    assert registry("wan").get("s") is session and session.chunks_done == 1
    assert sampler.sample(**_args(model))[0]["stream_frame"] == 3


def test_the_memory_estimate_counts_the_buffers_a_stream_allocates(models):
    model, _ = models
    for policy in ("longlive", "motionstream", "full"):
        config = StreamConfig(height=H, width=W, policy=cache_policy(policy), batch=2)
        session = StreamSession(model, config)
        parts = stream_memory(model, config)
        assert parts["KV cache"] == session.stream.cache.nbytes
        assert parts["latent history"] == session.stream.history.nbytes


def test_an_engine_stream_of_impossible_size_is_refused_before_allocating(models):
    model, _ = models
    with pytest.raises(NotEnoughMemoryError, match=r"32768x32768 stream .* needs about [0-9.]+ GiB .*is free on cpu"):
        StreamSession(model, StreamConfig(height=32768, width=32768))


# -------------------------------------------------------------------------- the engine's own boundaries

@pytest.mark.parametrize("chunks", [0, -2, 1.5, True])
def test_generate_refuses_a_bad_chunk_count_and_changes_nothing(models, chunks):
    model, _ = models
    session = StreamSession(model, StreamConfig(height=H, width=W))
    session.set_prompt(PROMPT)
    session.generate(1)
    with pytest.raises(ValueError, match="chunks must be a positive whole number"):
        session.generate(chunks)
    assert session.chunks_done == 1 and session.stream.frames_done == 3


@pytest.mark.parametrize("text, words", [
    (torch.full((1, 4, TEXT_DIM), float("nan")), "NaN"),
    (torch.full((1, 4, TEXT_DIM), float("inf")), "infinite"),
    (PROMPT[0], "batch axis"),
    (torch.randn(2, 4, TEXT_DIM), "batch of 2"),
    (torch.randn(1, 4, TEXT_DIM).to(torch.int64), "floating point"),
])
def test_wan_stream_refuses_a_bad_prompt_and_keeps_the_old_one(models, text, words):
    model, _ = models
    stream = WanStream(model, StreamConfig(height=H, width=W))
    stream.set_prompt(PROMPT)
    kv, version = stream.text_kv, stream.prompt_version
    with pytest.raises(ValueError, match=words):
        stream.set_prompt(text)
    assert stream.text_kv is kv and stream.prompt_version == version
    assert torch.isfinite(stream.next_chunk()).all()


@pytest.mark.parametrize("config, words", [
    (dict(width=40), "multiples of 16 .*width is 40.*32 or 48"),
    (dict(height=-16), "multiples of 16 .*height is -16"),
    (dict(chunk_frames=0), "chunk_frames"),
    (dict(batch=0), "batch must be at least 1"),
    (dict(seed=-1), "seed must be a non-negative"),
    (dict(steps=(500, 750)), "steps must be decreasing"),
    (dict(policy="longlive"), "CachePolicy"),
])
def test_wan_stream_refuses_bad_settings_with_the_fix(models, config, words):
    model, _ = models
    with pytest.raises(ValueError, match=words):
        WanStream(model, StreamConfig(**{"height": H, "width": W, **config}))


# ------------------------------------------------------------------------------------------ VACE controls

FRAMES = torch.rand(3, 9, H, W) * 2 - 1
MASK = torch.ones(1, 9, H, W)
CONTROL_CASES = [  # (Control kwargs, words)
    (dict(frames=FRAMES * 127.5 + 127.5), ["0..255", "divide by 255"]),
    (dict(frames=FRAMES * 3), ["outside [-1, 1]"]),
    (dict(frames=FRAMES.to(torch.uint8)), ["floating point", "127.5"]),
    (dict(frames=torch.full_like(FRAMES, float("nan"))), ["NaN"]),
    (dict(frames=FRAMES.permute(1, 2, 3, 0)), ["channels-last", "permute"]),
    (dict(frames=FRAMES[0]), ["no channel axis"]),
    (dict(frames=FRAMES[:2]), ["3 channel"]),
    (dict(mask=MASK * 255), ["mask", "0..255"]),
    (dict(mask=MASK * 2), ["mask", "outside [0, 1]"]),
    (dict(mask=MASK - 1.5), ["mask", "outside [0, 1]"]),
    (dict(mask=MASK[0]), ["no channel axis", "mask[None]"]),
    (dict(mask=MASK.permute(1, 2, 3, 0)), ["channels-last"]),
    (dict(mask=torch.full_like(MASK, float("nan"))), ["NaN"]),
    (dict(frames=FRAMES, mask=MASK[:, :, :16]), ["mask", "size"]),
    (dict(references=FRAMES.transpose(0, 1)[:2] * 255), ["references", "0..255"]),
    (dict(references=FRAMES[:, 0]), ["references", "single image", "images[None]"]),
    (dict(first_frame=FRAMES[:, 0].permute(1, 2, 0)), ["first_frame", "channels-last"]),
    (dict(last_frame=FRAMES[:, :0, :, :].reshape(3, 0, W)), ["last_frame", "empty"]),
    (dict(frames=FRAMES, strength=float("nan")), ["strength", "finite"]),
    (dict(frames=torch.empty(3, 0, H, W)), ["empty"]),
]


@pytest.mark.parametrize("kwargs, words", CONTROL_CASES, ids=[f"control{i}" for i in range(len(CONTROL_CASES))])
def test_a_bad_control_input_is_refused_with_the_fix(kwargs, words):
    with pytest.raises(ValueError) as error:
        Control(**kwargs)
    for word in words:
        assert word.lower() in str(error.value).lower(), str(error.value)


def test_the_control_node_refuses_0_255_images_and_out_of_range_masks():
    node = NODES["StreamVACEControl"]()
    with pytest.raises(ValueError, match="0..255"):
        node.build(1.0, "stream", control_video=torch.rand(9, H, W, 3) * 255)
    with pytest.raises(ValueError, match=r"mask .*outside \[0, 1\]"):
        node.build(1.0, "stream", control_mask=torch.rand(9, H, W) * 4 - 2)
    assert node.build(1.0, "stream", control_mask=torch.rand(9, H, W))[0][0].mask.shape == (1, 9, H, W)


@pytest.mark.parametrize("controls, words", [
    ("depth", "list of Control"),
    ([torch.zeros(3)], "Control objects"),
])
def test_generate_refuses_what_is_not_a_control_list_and_changes_nothing(models, controls, words):
    model, vae = models
    session = StreamSession(model, StreamConfig(height=H, width=W), vae)
    session.set_prompt(PROMPT)
    with pytest.raises(ValueError, match=words):
        session.generate(1, controls)
    assert session.chunks_done == 0


def test_controls_without_a_vae_are_refused_before_the_stream_moves(models):
    model, vae = models
    control = NODES["StreamVACEControl"]().build(1.0, "stream", control_video=torch.rand(33, H, W, 3))[0]
    reference = _reference_chunks(model, vae, control)
    sampler = NODES["StreamVACESampler"]()
    first = [sampler.sample(**_args(model, vae=vae, control=control))[0]["samples"] for _ in range(2)]
    with pytest.raises(ValueError, match="need a VAE: connect one"):
        sampler.sample(**_args(model, control=control))
    third = sampler.sample(**_args(model, vae=vae, control=control))[0]["samples"]
    torch.testing.assert_close(torch.cat(first + [third], 2), torch.cat(reference, 2))


def test_the_context_builder_refuses_cpu_frames_out_of_range(vaes):
    from streamvace.models.wan.vace_context import VaceContextBuilder

    builder = VaceContextBuilder(vaes["wan"], H, W)
    with pytest.raises(ValueError, match=r"control frames .*0\.\.255"):
        builder.context_for_chunk(frames=torch.full((1, 3, 9, H, W), 200.0))
    with pytest.raises(ValueError, match=r"control mask .*outside \[0, 1\]"):
        builder.context_for_chunk(mask=torch.full((1, 1, 9, H, W), 3.0))
    assert builder.chunks == 0 and builder.inactive.first_chunk


# --------------------------------------------------------------------------------- model and LoRA files

def _weights(tmp_path, name, state_dict):
    return save_weights(state_dict, tmp_path / name)


@pytest.mark.parametrize("which", ["base", "vace"])
def test_nan_weights_are_refused_at_load_naming_the_file(tmp_path, which):
    full = tiny_model(vace=True).state_dict()
    base = {k: v for k, v in full.items() if not k.startswith("vace_")}
    vace = {k: v for k, v in full.items() if k.startswith("vace_")}
    target = base if which == "base" else vace
    key = next(k for k in target if k.endswith("weight"))
    target[key] = target[key].clone().fill_(float("nan"))
    base_path, vace_path = _weights(tmp_path, "base.safetensors", base), _weights(tmp_path, "vace.safetensors", vace)
    with pytest.raises(CheckpointError) as error:
        load_wan_model(base_path, vace_path=vace_path, dtype=torch.float32)
    message = str(error.value)
    assert message.startswith(base_path if which == "base" else vace_path) and key in message
    assert "NaN or infinite" in message and "download it again" in message


def test_weights_that_overflow_float16_are_named_with_the_fix(tmp_path):
    sd = tiny_model().state_dict()
    sd["head.head.weight"] = sd["head.head.weight"] * 1e6
    with pytest.raises(CheckpointError, match=r"head\.head\.weight.*float16.*bf16"):
        load_wan_model(_weights(tmp_path, "big.safetensors", sd), dtype=torch.float16)


@pytest.mark.parametrize("loader, state_dict", [(load_wan_vae, wan_vae_state_dict), (load_tiny_vae, tiny_vae_state_dict)])
def test_nan_vae_weights_are_refused_naming_the_file(tmp_path, loader, state_dict):
    sd = state_dict(seed=1)
    key = next(k for k in sorted(sd) if k.endswith(".weight"))
    sd[key] = torch.full_like(sd[key], float("nan"))
    path = _weights(tmp_path, "vae.pth", sd)
    with pytest.raises(CheckpointError, match=rf"^{path}: .*{key}"):
        loader(path)


def _lora(sd, target, rank=4, transposed=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    out, inp = sd[target + ".weight"].shape
    if transposed:
        out, inp = inp, out
    return {f"diffusion_model.{target}.lora_A.weight": torch.randn(rank, inp, generator=generator),
            f"diffusion_model.{target}.lora_B.weight": torch.randn(out, rank, generator=generator)}


LORA_CASES = [  # (make the LoRA from the model's state dict, words)
    (lambda sd: _lora(sd, "blocks.0.ffn.0", transposed=True), ["blocks.0.ffn.0", "(256, 4)", "(4, 384)", "(384, 256)"]),
    (lambda sd: {**_lora(sd, "blocks.0.self_attn.q"), "diffusion_model.blocks.0.self_attn.q.lora_B.weight":
                 torch.randn(512, 4)}, ["blocks.0.self_attn.q", "(512, 4)", "(256, 256)", "another model"]),
    (lambda sd: {k: v for k, v in _lora(sd, "blocks.1.ffn.2").items() if "lora_A" in k}, ["only lora_A", "incomplete"]),
    (lambda sd: wan_vae_state_dict(seed=0), ["no LoRA layers", "a Wan VAE"]),
    (lambda sd: tiny_model().state_dict(), ["no LoRA layers", "a Wan2.1 DiT"]),
    (lambda sd: {k.replace("blocks.0.", "blocks.9."): v for k, v in _lora(sd, "blocks.0.ffn.0").items()},
     ["match no layer", "blocks.9.ffn.0"]),
    (lambda sd: {k: v * float("nan") for k, v in _lora(sd, "blocks.0.ffn.0").items()}, ["NaN"]),
]


@pytest.mark.parametrize("make, words", LORA_CASES, ids=[f"lora{i}" for i in range(len(LORA_CASES))])
def test_a_lora_that_does_not_fit_names_file_layer_and_shapes(tmp_path, make, words):
    sd = tiny_model().state_dict()
    base = _weights(tmp_path, "base.safetensors", sd)
    lora = _weights(tmp_path, "lora.safetensors", make(sd))
    with pytest.raises(CheckpointError) as error:
        load_wan_model(base, loras=[(lora, 1.0)], dtype=torch.float32)
    message = str(error.value)
    assert message.startswith(lora), message
    for word in words:
        assert word in message, message


def test_a_refused_lora_leaves_the_weights_unchanged():
    sd = {k: v.clone() for k, v in tiny_model().state_dict().items()}
    before = {k: v.clone() for k, v in sd.items()}
    lora = {**_lora(sd, "blocks.0.self_attn.q"), **_lora(sd, "blocks.0.ffn.0", transposed=True)}
    with pytest.raises(CheckpointError, match="blocks.0.ffn.0"):
        merge_lora(sd, lora, 1.0, "lora.pt")
    assert all(torch.equal(sd[k], before[k]) for k in sd)
    with pytest.raises(CheckpointError, match="strength must be a finite number"):
        merge_lora(sd, _lora(sd, "blocks.0.self_attn.q"), float("nan"), "lora.pt")


def test_a_failed_lora_load_keeps_the_loaded_model(models, models_dir):
    model, _ = models
    sd = tiny_model().state_dict()
    save_weights(_lora(sd, "blocks.0.ffn.0", transposed=True), models_dir / "loras" / "bad_lora.safetensors")
    lora = NODES["StreamVACELora"]().select("bad_lora.safetensors", 1.0)[0]
    with pytest.raises(CheckpointError, match="bad_lora.safetensors"):
        NODES["StreamVACEModelLoader"]().load("wan_t2v_tiny.safetensors", "vace_module_tiny.safetensors", "fp32",
                                              "sdpa", lora=lora)
    again = NODES["StreamVACEModelLoader"]().load("wan_t2v_tiny.safetensors", "vace_module_tiny.safetensors", "fp32",
                                                  "sdpa")[0]
    assert again is model and torch.isfinite(model.head.head.weight).all()


# ------------------------------------------------------------------------------------------------- VAEs

@pytest.fixture(scope="module")
def vaes(tmp_path_factory):
    root = tmp_path_factory.mktemp("vaes")
    return {"wan": load_wan_vae(save_weights(wan_vae_state_dict(seed=2), root / "wan.pth")),
            "tiny": load_tiny_vae(save_weights(tiny_vae_state_dict(seed=3), root / "tiny.pth"))}


@pytest.mark.parametrize("kind", ["wan", "tiny"])
@pytest.mark.parametrize("bad, words", [
    (lambda v: v.clone().fill_(float("nan")), "NaN"),
    (lambda v: (v + 1) * 127.5, "0..255"),
    (lambda v: v * 4, r"outside \[-1, 1\]"),
])
def test_bad_frames_into_a_vae_encoder_are_refused_and_the_stream_continues(vaes, kind, bad, words):
    vae = vaes[kind]
    video = random_video(21, H, W, seed=1)
    reference_cache = vae.new_encoder_cache()
    vae.encode(video[:, :, :9], reference_cache)
    reference = vae.encode(video[:, :, 9:], reference_cache)
    cache = vae.new_encoder_cache()
    vae.encode(video[:, :, :9], cache)
    with pytest.raises(ValueError, match=words):
        vae.encode(bad(video[:, :, 9:]), cache)
    torch.testing.assert_close(vae.encode(video[:, :, 9:], cache), reference)


@pytest.mark.parametrize("kind", ["wan", "tiny"])
def test_nan_latents_into_a_vae_decoder_are_refused(vaes, kind):
    vae = vaes[kind]
    cache = vae.new_decoder_cache()
    latents = torch.randn(1, 16, 3, H // 8, W // 8)
    with pytest.raises(ValueError, match="latents given to the VAE decoder contains NaN"):
        vae.decode(latents * float("nan"), cache)
    assert cache.first_chunk and vae.decode(latents, cache).shape[2] == 9


def test_the_encode_node_refuses_nan_images_and_continues(models):
    _, vae = models
    node = NODES["StreamVACEVAEEncodeStream"]()
    frames = (random_video(21, H, W, seed=4)[0].permute(1, 2, 3, 0) + 1) / 2
    reference = EncodeStream()
    expected = [reference.encode(vae, frames[:9].permute(3, 0, 1, 2)[None] * 2 - 1),
                reference.encode(vae, frames[9:].permute(3, 0, 1, 2)[None] * 2 - 1)]
    first = node.encode(vae, frames[:9], "e", False)[0]
    with pytest.raises(ValueError, match="NaN"):
        node.encode(vae, frames[9:] * float("nan"), "e", False)
    second = node.encode(vae, frames[9:], "e", False)[0]
    from streamvace.models.vae.latent_format import comfy_to_latents

    torch.testing.assert_close(comfy_to_latents(first), expected[0])
    torch.testing.assert_close(comfy_to_latents(second), expected[1])


# ------------------------------------------------------------------------------------------------ registry

def test_a_failed_factory_leaves_the_old_entry():
    streams = StreamRegistry("test")
    old = streams.get_or_create("a", 1, lambda: "old")

    def fail():
        raise ValueError("width 40 is not a multiple of 16")

    with pytest.raises(ValueError, match="width 40"):
        streams.get_or_create("a", 2, fail)
    assert streams.get("a") is old and streams.replaced("a", 2) is old and streams.replaced("a", 1) is None


def test_a_factory_out_of_memory_beside_the_old_entry_retries_without_it():
    streams = StreamRegistry("test")
    streams.get_or_create("a", 1, lambda: "old")
    calls = []

    def needs_the_memory():
        calls.append(streams.get("a"))
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return "new"

    assert streams.get_or_create("a", 2, needs_the_memory) == "new" and calls == ["old", None]


# --------------------------------------------------------------------------------------------- DreamLite

@pytest.fixture(scope="module")
def dreamlite(tmp_path_factory):
    from dreamlite_tiny import build_tiny_dreamlite

    root = tmp_path_factory.mktemp("dreamlite")
    folder = build_tiny_dreamlite(str(root / "diffusers" / "DreamLite-mobile"))
    os.makedirs(root / "controlnet")
    old = os.environ.get("STREAMVACE_MODELS_DIR")
    os.environ["STREAMVACE_MODELS_DIR"] = str(root)
    try:
        yield NODES["StreamVACEDreamLiteLoader"]().load("DreamLite-mobile", "none", "down_blocks", "float32", "off")[0]
    finally:
        if old is None:
            os.environ.pop("STREAMVACE_MODELS_DIR")
        else:
            os.environ["STREAMVACE_MODELS_DIR"] = old
        free_streams()
    del folder


def _stylize(dreamlite, frames, stream_id, **overrides):
    knobs = dict(prompt="an oil painting style", stream_id=stream_id, reset=False, width=64, height=64, steps=1,
                 batch_size=2, te_refresh_every=1, te_batch_one=False, cond_refresh_every=1, lllite_strength=1.0,
                 fixed_noise=False, seed=3)
    knobs.update(overrides)
    return NODES["StreamVACEDreamLiteStylize"]().stylize(dreamlite, frames, **knobs)[0]


def _frames(count, seed=0):
    from dreamlite_tiny import random_frames

    return random_frames(count, 64, seed)


DREAMLITE_CASES = [  # (frames from good frames, overrides, words)
    (lambda f: f * float("nan"), {}, ["NaN"]),
    (lambda f: f * 255, {}, ["0..255", "divide by 255"]),
    (lambda f: f - 0.5, {}, [r"outside [0, 1]"]),
    (lambda f: f.permute(0, 3, 1, 2), {}, ["channels first"]),
    (lambda f: f[:0], {}, ["at least one frame"]),
    (lambda f: f, dict(width=300), ["multiples of 32"]),
    (lambda f: f, dict(steps=0), ["steps must be 1 to 4"]),
    (lambda f: f, dict(prompt="  "), ["prompt is empty"]),
    (lambda f: f * float("nan"), dict(reset=True), ["NaN"]),
]


@pytest.mark.parametrize("bad, overrides, words", DREAMLITE_CASES, ids=[f"dreamlite{i}" for i in range(len(DREAMLITE_CASES))])
def test_bad_dreamlite_input_neither_fails_silently_nor_poisons_the_stream(dreamlite, bad, overrides, words):
    frames = _frames(4)
    if "dreamlite" not in _REFERENCE:
        _REFERENCE["dreamlite"] = _stylize(dreamlite, frames, "reference", reset=True)
    reference = _REFERENCE["dreamlite"]
    first = _stylize(dreamlite, frames[:2], "s", reset=True)
    with pytest.raises(ValueError) as error:
        _stylize(dreamlite, bad(frames[2:4]), "s", **overrides)
    for word in words:
        assert word.lower() in str(error.value).lower(), str(error.value)
    rest = _stylize(dreamlite, frames[2:], "s")
    assert torch.isfinite(rest).all()
    torch.testing.assert_close(torch.cat([first, rest]), reference)


def test_dreamlite_loads_without_deprecation_warnings_or_the_accelerate_notice(dreamlite, capfd):
    from streamvace.models.dreamlite.loader import load_dreamlite

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        models = load_dreamlite(dreamlite.models.folder, dtype=torch.float32)
        models.prompt_encoder.encode("a watercolor wash", torch.zeros(1, 3, 64, 64))
    ours = [str(w.message) for w in caught if "streamvace" in w.filename or "past_key_values" in str(w.message)]
    assert not ours and "accelerate" not in capfd.readouterr().err


def test_requirements_bound_transformers_to_the_tested_versions():
    import transformers
    from packaging.requirements import Requirement

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    lines = [line.split("#")[0].strip() for line in open(os.path.join(root, "requirements.txt"))]
    requirement = next(Requirement(line) for line in lines if line.startswith("transformers"))
    assert any(spec.operator == "<" for spec in requirement.specifier)
    assert requirement.specifier.contains(transformers.__version__)


# -------------------------------------------------------------------------------------------- Save Stream

@pytest.fixture()
def output_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside ComfyUI the output folder is ./output
    yield tmp_path / "output"
    free_streams()
    from streamvace.nodes.output_nodes import _close_all

    _close_all()


def _decoded(path):
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_save_stream_refuses_a_new_size_and_nan_frames_and_keeps_writing(output_dir):
    saver = NODES["StreamVACESaveStream"]()
    saver.save(torch.rand(4, H, W, 3), "v", "clip", 16.0, False)
    with pytest.raises(ValueError, match=r"these frames are 64x64 but the open video file is 48x32.*one size"):
        saver.save(torch.rand(4, 64, 64, 3), "v", "clip", 16.0, False)
    with pytest.raises(ValueError, match="NaN"):
        saver.save(torch.full((4, H, W, 3), float("nan")), "v", "clip", 16.0, False)
    with pytest.raises(ValueError, match="0..255"):
        saver.save(torch.rand(4, H, W, 3) * 255, "v", "clip", 16.0, False)
    with pytest.raises(ValueError, match="inside the output folder"):
        saver.save(torch.rand(4, H, W, 3), "v", "../escape", 16.0, False)
    saver.save(torch.rand(4, H, W, 3), "v", "clip", 16.0, True)
    frames = _decoded(output_dir / "clip_00001.mp4")
    assert len(frames) == 8 and frames[0].shape == (H, W, 3)
    assert sorted(os.listdir(output_dir)) == ["clip_00001.mp4"]


@pytest.mark.parametrize("height, width", [(1, 1), (33, 47), (2, 3)])
def test_save_stream_pads_odd_and_tiny_sizes_instead_of_cropping_or_crashing(output_dir, height, width):
    saver = NODES["StreamVACESaveStream"]()
    images = torch.rand(3, height, width, 3)
    saver.save(images, "odd", "odd", 16.0, True)
    frames = _decoded(output_dir / "odd_00001.mp4")
    assert len(frames) == 3 and frames[0].shape == (height + height % 2, width + width % 2, 3)


def test_a_writer_that_fails_on_its_first_frames_is_not_left_registered(output_dir, monkeypatch):
    from streamvace.annotators.video_io import VideoWriter

    saver = NODES["StreamVACESaveStream"]()

    def broken(self, chunk):
        raise OSError("avcodec_open2 failed")

    with monkeypatch.context() as patch:
        patch.setattr(VideoWriter, "write", broken)
        with pytest.raises(OSError, match="avcodec_open2"):
            saver.save(torch.rand(2, H, W, 3), "b", "broken", 16.0, False)
    assert registry("save_stream").get("b") is None and not os.listdir(output_dir)
    saver.save(torch.rand(2, H, W, 3), "b", "broken", 16.0, True)
    assert len(_decoded(output_dir / "broken_00001.mp4")) == 2


# --------------------------------------------------------------------------------------------------- CLI

CLI_CASES = [  # (arguments, words in the one-line message)
    (["sample-clip", "--out", "x.txt"], ["'.txt'", ".mp4"]),
    (["sample-clip", "--out", "x.gif"], ["GIF", ".mp4"]),
    (["sample-clip", "--out", "noext"], ["without an extension"]),
    (["sample-clip", "--out", "."], ["is a folder", "out.mp4"]),
    (["sample-clip", "--out", "/proc/no/such/x.mp4"], ["/proc/no/such/x.mp4", "folder you can write to"]),
    (["sample-clip", "--out", "afile.txt/x.mp4"], ["is not a folder"]),
    (["sample-clip", "--out", "s.mp4", "--height", "0"], ["--height must be at least 1"]),
    (["sample-clip", "--out", "s.mp4", "--width", "-4"], ["--width must be at least 1"]),
    (["sample-clip", "--out", "s.mp4", "--frames", "0"], ["--frames must be at least 1"]),
    (["annotate", "--kind", "gray", "--input", "sample", "--out", "a.mp4", "--chunk", "0"], ["--chunk", "at least 1"]),
    (["annotate", "--kind", "gray", "--input", "sample", "--out", "a.mp4", "--chunk", "-3"], ["--chunk", "at least 1"]),
    (["annotate", "--kind", "gray", "--input", "sample", "--out", "a.mp4", "--frames", "-5"], ["--frames", "0 (no limit)"]),
    (["annotate", "--kind", "gray", "--input", "sample", "--out", "a.mp4", "--device", "tpu"], ["not a device"]),
    (["annotate", "--kind", "gray", "--input", ".", "--out", "a.mp4"], ["is a folder, not a video file"]),
    (["annotate", "--kind", "gray", "--input", "afile.txt", "--out", "a.mp4"], ["not a readable video"]),
    (["annotate", "--kind", "gray", "--input", "missing.mp4", "--out", "a.mp4"], ["no such video file"]),
    (["annotate", "--kind", "gray", "--input", "sample", "--out", "a.gif"], ["GIF"]),
]
if not torch.cuda.is_available():
    CLI_CASES.append((["annotate", "--kind", "gray", "--input", "sample", "--out", "a.mp4", "--device", "cuda"],
                      ["CUDA is not available", "--device cpu"]))


@pytest.mark.parametrize("argv, words", CLI_CASES, ids=[" ".join(a)[:70] for a, _ in CLI_CASES])
def test_the_cli_refuses_bad_arguments_in_one_line_with_exit_code_2(tmp_path, monkeypatch, capsys, argv, words):
    from streamvace.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile.txt").write_text("not a video")
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"streamvace {argv[0]}: ") and not captured.out, captured
    for word in words:
        assert word in lines[0], lines[0]
    assert sorted(os.listdir(tmp_path)) == ["afile.txt"]  # nothing written


def test_the_cli_reports_the_size_it_wrote(tmp_path, capsys):
    from streamvace.annotators.video_io import read_video_chunks
    from streamvace.cli import main

    out = tmp_path / "odd.mp4"
    assert main(["sample-clip", "--out", str(out), "--frames", "3", "--height", "17", "--width", "33"]) == 0
    assert "3 frames of 33x17 (padded to 34x18" in capsys.readouterr().out
    chunk, _ = next(read_video_chunks(str(out)))
    assert chunk.shape == (3, 3, 18, 34)


def test_progress_is_logged_on_slow_devices(monkeypatch, caplog):
    from streamvace.nodes import host

    clock = iter([0.0, 12.0, 24.5, 25.0])
    monkeypatch.setattr(host.time, "monotonic", lambda: next(clock))
    progress = host.Progress(5, "Stream Sampler")
    with caplog.at_level("WARNING", logger="streamvace"):
        progress.update()
        progress.update()
        progress.update()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["Stream Sampler: step 1 of 5 took 12 s (about 48 s left); a smaller size or a GPU is faster",
                        "Stream Sampler: step 2 of 5 took 12 s (about 37 s left); a smaller size or a GPU is faster"]
    assert math.isclose(progress.current, 3)


@pytest.mark.parametrize("reset", [False, True])
def test_a_failed_annotator_run_with_or_without_reset_keeps_the_stream(reset):
    node, layout = NODES["StreamVACELayout"](), '{"boxes": [[4, 4, 20, 20], [24, 10, 40, 26]]}'
    args = dict(layout=layout, width=W, height=H, total_frames=24, box_size=8, thickness=2.0, stream_id="lay")
    try:
        reference = node.render(frames=12, reset=True, **{**args, "stream_id": "lay-reference"})[0]
        first = node.render(frames=4, reset=True, **args)[0]
        with pytest.raises(ValueError, match="at least one frame"):
            node.render(frames=0, reset=reset, **args)
        rest = node.render(frames=8, reset=False, **args)[0]
        torch.testing.assert_close(torch.cat([first, rest]), reference)
    finally:
        free_streams()
