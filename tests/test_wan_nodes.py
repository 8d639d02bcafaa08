"""The generator's nodes as ComfyUI calls them, outside ComfyUI (nodes/host.py's plain models folder):
N queued runs of the same graph give N consecutive chunks of one video."""

import numpy as np
import pytest
import torch

from streamvace.models.vae.latent_format import comfy_to_latents
from streamvace.models.wan.stream import StreamConfig
from streamvace.models.wan.stream_session import StreamSession
from streamvace.models.wan.checkpoint import load_wan_model
from streamvace.nodes import NODE_CLASS_MAPPINGS as NODES
from streamvace.nodes.streams import free_streams

from _vae_helpers import save_weights, wan_vae_state_dict
from wan_tiny import TEXT_DIM, tiny_model

H, W = 32, 48


@pytest.fixture()
def models_dir(tmp_path, monkeypatch):
    for folder in ("diffusion_models", "vae", "loras"):
        (tmp_path / folder).mkdir()
    full = tiny_model(vace=True).state_dict()
    save_weights({f"model.diffusion_model.{k}": v for k, v in full.items() if not k.startswith("vace_")},
                 tmp_path / "diffusion_models" / "wan_t2v_tiny.safetensors")
    save_weights({k: v for k, v in full.items() if k.startswith("vace_")},
                 tmp_path / "diffusion_models" / "vace_module_tiny.safetensors")
    save_weights(wan_vae_state_dict(seed=2), tmp_path / "vae" / "wan_vae_tiny.pth")
    monkeypatch.setenv("STREAMVACE_MODELS_DIR", str(tmp_path))
    yield tmp_path
    free_streams()


def _load(models_dir):
    model = NODES["StreamVACEModelLoader"]().load("wan_t2v_tiny.safetensors", "vace_module_tiny.safetensors", "fp32",
                                                   "sdpa")[0]
    vae = NODES["StreamVACELoadWanVAE"]().load("wan_vae_tiny.pth", "fp32")[0]
    return model, vae


def test_loader_combo_lists_the_model_folder(models_dir):
    torch.save({}, models_dir / "diffusion_models" / "longlive_base.pt")  # a pickle: only loading tells
    save_weights(wan_vae_state_dict(seed=2), models_dir / "diffusion_models" / "a_vae.safetensors")
    save_weights({"lora_unet_blocks_0_self_attn_q.lora_down.weight": torch.zeros(4, 8),
                  "lora_unet_blocks_0_self_attn_q.lora_up.weight": torch.zeros(8, 4)}, models_dir / "loras" / "wan.safetensors")
    save_weights({"lora_unet_down_blocks_0_attn.lora_down.weight": torch.zeros(4, 8),
                  "lora_unet_down_blocks_0_attn.lora_up.weight": torch.zeros(8, 4)}, models_dir / "loras" / "sd.safetensors")
    spec = NODES["StreamVACEModelLoader"].INPUT_TYPES()["required"]
    assert spec["model_name"][0] == ["longlive_base.pt", "wan_t2v_tiny.safetensors"]  # filtered by their headers
    assert spec["vace_module"][0] == ["none", "longlive_base.pt", "vace_module_tiny.safetensors"]
    assert NODES["StreamVACELora"].INPUT_TYPES()["required"]["lora_name"][0] == ["wan.safetensors"]


def test_queued_runs_continue_one_stream(models_dir):
    model, vae = _load(models_dir)
    prompt = [[torch.randn(1, 7, TEXT_DIM), {}]]
    video = torch.rand(33, H, W, 3)
    control = NODES["StreamVACEControl"]().build(0.8, "stream", control_video=video)[0]
    sampler, decoder = NODES["StreamVACESampler"](), NODES["StreamVACEVAEDecodeStream"]()
    args = dict(model=model, positive=prompt, stream_id="s", reset=False, width=W, height=H, chunks=1, seed=3,
                cache_policy="longlive", steps="1000,750,500,250", warp_steps=True, vae=vae, control=control)
    runs = [sampler.sample(**args)[0] for _ in range(3)]
    frames = [decoder.decode(vae, latent, "s", False)[0] for latent in runs]
    assert [r["stream_frame"] for r in runs] == [0, 3, 6] and runs[0]["stream_id"] == "s"
    assert [f.shape[0] for f in frames] == [9, 12, 12] and frames[0].shape[1:] == (H, W, 3)

    session = StreamSession(load_wan_model(str(models_dir / "diffusion_models" / "wan_t2v_tiny.safetensors"),
                                           vace_path=str(models_dir / "diffusion_models" / "vace_module_tiny.safetensors"),
                                           dtype=torch.float32), StreamConfig(height=H, width=W, seed=3), vae)
    session.set_prompt(prompt[0][0])
    expected = session.generate(3, control)
    got = torch.cat([comfy_to_latents(r) for r in runs], dim=2)
    assert ((got - expected).norm() / expected.norm()) <= 1e-5

    restarted = sampler.sample(**{**args, "reset": True})[0]
    assert restarted["stream_frame"] == 0 and torch.equal(restarted["samples"], runs[0]["samples"])
    assert decoder.decode(vae, restarted, "s", False)[0].shape[0] == 9  # the decoder follows the restart


def test_changing_the_size_restarts_the_stream(models_dir):
    model, vae = _load(models_dir)
    sampler = NODES["StreamVACESampler"]()
    args = dict(model=model, positive=[[torch.randn(1, 7, TEXT_DIM), {}]], stream_id="s", reset=False, width=W,
                height=H, chunks=2, seed=0, cache_policy="motionstream", steps="1000,500", warp_steps=False)
    assert sampler.sample(**args)[0]["stream_frame"] == 0
    assert sampler.sample(**args)[0]["stream_frame"] == 6
    assert sampler.sample(**{**args, "width": 64})[0]["stream_frame"] == 0


def test_sampler_validates_steps():
    validate = NODES["StreamVACESampler"].VALIDATE_INPUTS
    assert validate(steps="1000,750,500,250") is True
    assert "decreasing" in validate(steps="250,500")
    assert "comma-separated numbers" in validate(steps="fast")


def test_chunk_frames_follow_the_sampler_and_the_stream_saves_to_one_file(models_dir, tmp_path, monkeypatch):
    import av

    monkeypatch.chdir(tmp_path)  # outside ComfyUI the output folder is ./output
    model, vae = _load(models_dir)
    source = torch.rand(40, H, W, 3)
    cut, sampler = NODES["StreamVACEChunkFrames"](), NODES["StreamVACESampler"]()
    decoder, saver = NODES["StreamVACEVAEDecodeStream"](), NODES["StreamVACESaveStream"]()
    args = dict(model=model, positive=[[torch.randn(1, 7, TEXT_DIM), {}]], stream_id="live", reset=False, width=W,
                height=H, chunks=1, seed=0, cache_policy="longlive", steps="1000,500", warp_steps=True, vae=vae)
    for run, (start, length) in enumerate([(0, 9), (9, 12), (21, 12)]):
        frames = cut.cut(source, "live", 1, False)[0]
        assert torch.equal(frames, source[start:start + length])
        control = NODES["StreamVACEControl"]().build(1.0, "call", control_video=frames)[0]
        latent = sampler.sample(**args, control=control)[0]
        report = saver.save(decoder.decode(vae, latent, "live", False)[0], "live", "clips/live", 16.0, run == 2)
    assert report["ui"]["images"] == [{"filename": "live_00001.mp4", "subfolder": "clips", "type": "output"}]
    with av.open(str(tmp_path / "output" / "clips" / "live_00001.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 33
    assert cut.cut(source, "live", 2, True)[0].shape[0] == 21  # reset: from the start, 9 + 12 frames


def test_chunk_frames_line_up_with_a_prefilled_stream(models_dir):
    """Continuing a clip: the live cuts ('call' timing) steer exactly as the whole video does with 'stream' timing,
    frame i of the video being frame i of the stream, the prefilled clip's frames included."""
    model, vae = _load(models_dir)
    source, clip = torch.rand(60, H, W, 3), torch.rand(25, H, W, 3)  # the clip's last 21 frames: 2 chunks
    cut, sampler = NODES["StreamVACEChunkFrames"](), NODES["StreamVACESampler"]()
    args = dict(model=model, positive=[[torch.randn(1, 7, TEXT_DIM), {}]], reset=False, width=W, height=H,
                chunks=1, seed=1, cache_policy="longlive", steps="1000,500", warp_steps=True, vae=vae, prefill=clip)
    whole = NODES["StreamVACEControl"]().build(1.0, "stream", control_video=source)[0]
    for start in (21, 33):
        frames = cut.cut(source, "pre", 1, False, prefill=clip)[0]
        assert torch.equal(frames, source[start:start + 12])
        live = sampler.sample(**args, stream_id="pre",
                              control=NODES["StreamVACEControl"]().build(1.0, "call", control_video=frames)[0])[0]
        expected = sampler.sample(**args, stream_id="pre_whole", control=whole)[0]
        assert live["stream_frame"] == expected["stream_frame"] == start // 4 + 1
        torch.testing.assert_close(live["samples"], expected["samples"])
    assert torch.equal(cut.cut(source, "pre", 1, True, prefill=clip)[0], source[21:33])  # reset: prefilled again
    assert torch.equal(cut.cut(source, "pre", 2, True)[0], source[:21])  # reset without a clip: from the start
    assert torch.equal(cut.cut(source, "fresh", 1, False, prefill=clip[:9])[0], source[9:21])


def test_decoder_fills_in_chunks_a_failed_run_never_delivered(models_dir):
    model, vae = _load(models_dir)
    sampler, decoder = NODES["StreamVACESampler"](), NODES["StreamVACEVAEDecodeStream"]()
    args = dict(model=model, positive=[[torch.randn(1, 7, TEXT_DIM), {}]], stream_id="g", reset=False, width=W,
                height=H, chunks=1, seed=5, cache_policy="longlive", steps="1000,500", warp_steps=True)
    runs = [sampler.sample(**args)[0] for _ in range(3)]
    expected = [decoder.decode(vae, latent, "reference", False)[0] for latent in runs]
    sampler.sample(**{**args, "reset": True})  # the same stream again ...
    decoder.decode(vae, runs[0], "d", False)
    sampler.sample(**args)  # ... whose second run failed before its decoder ran
    filled = decoder.decode(vae, sampler.sample(**args)[0], "d", False)[0]
    assert filled.shape[0] == 24 and torch.allclose(filled, torch.cat(expected[1:]), atol=1e-5)


def test_free_streams_frees_the_stream_and_the_models(models_dir):
    from streamvace.nodes import model_cache
    from streamvace.nodes.streams import registry

    model, _ = _load(models_dir)
    NODES["StreamVACESampler"]().sample(model=model, positive=[[torch.randn(1, 7, TEXT_DIM), {}]], stream_id="f",
                                        reset=False, width=W, height=H, chunks=1, seed=0, cache_policy="longlive",
                                        steps="1000", warp_steps=True)
    assert registry("wan").get("f") is not None
    report = NODES["StreamVACEFreeStreams"]().free("f", True)
    assert registry("wan").get("f") is None and report["ui"]["text"] == ["freed 1 stream(s) and the models"]
    assert _load(models_dir)[0] is not model  # loaded again
    assert not model_cache._MODELS or all(v is not model for v in model_cache._MODELS.values())


def test_a_new_seed_every_run_continues_one_stream(models_dir):
    model, vae = _load(models_dir)
    prompt = [[torch.randn(1, 7, TEXT_DIM), {}]]
    sampler, decoder = NODES["StreamVACESampler"](), NODES["StreamVACEVAEDecodeStream"]()
    args = dict(model=model, positive=prompt, stream_id="r", reset=False, width=W, height=H, chunks=1,
                cache_policy="longlive", steps="1000,500", warp_steps=True)
    runs = [sampler.sample(**args, seed=seed)[0] for seed in (11, 52, 7)]  # "randomize after generate"
    assert [r["stream_frame"] for r in runs] == [0, 3, 6]
    assert [decoder.decode(vae, r, "r", False)[0].shape[0] for r in runs] == [9, 12, 12]
    session = StreamSession(model, StreamConfig(height=H, width=W, steps=(1000.0, 500.0), seed=11))
    session.set_prompt(prompt[0][0])
    expected = []
    for seed in (11, 52, 7):
        session.set_seed(seed)
        expected.append(session.generate(1))
    assert torch.allclose(torch.cat([comfy_to_latents(r) for r in runs], 2), torch.cat(expected, 2), atol=1e-5)
    assert sampler.sample(**{**args, "reset": True}, seed=7)[0]["stream_frame"] == 0  # reset still restarts


class _FakeCLIP:
    """ComfyUI's CLIP object as CLIPTextEncode uses it: tokenize, then encode_from_tokens_scheduled."""

    def __init__(self):
        self.embeddings = {}

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, tokens):
        return [[self.embeddings.setdefault(tokens, torch.randn(1, 5, TEXT_DIM)), {}]]


def test_prompt_schedule_and_prefill_reach_the_stream(models_dir):
    model, vae = _load(models_dir)
    clip = _FakeCLIP()
    assert NODES["StreamVACEPromptSchedule"].VALIDATE_INPUTS(schedule="0 a cat") != True  # noqa: E712
    prompts = NODES["StreamVACEPromptSchedule"]().encode(clip, "0: a cat\n2: a dog")[0]
    positive = [[torch.randn(1, 7, TEXT_DIM), {}]]
    clip_frames = torch.rand(9, H, W, 3)
    sampler = NODES["StreamVACESampler"]()
    args = dict(model=model, positive=positive, stream_id="p", reset=False, width=W, height=H, chunks=2, seed=4,
                cache_policy="longlive", steps="1000,500", warp_steps=True, vae=vae, prompts=prompts,
                prefill=clip_frames)
    runs = [sampler.sample(**args)[0] for _ in range(2)]
    assert [r["stream_frame"] for r in runs] == [3, 9]  # after the 3 prefilled latent frames
    session = StreamSession(model, StreamConfig(height=H, width=W, steps=(1000.0, 500.0), seed=4), vae)
    session.set_prompt(clip.embeddings["a cat"])
    session.prefill_video(clip_frames.permute(3, 0, 1, 2) * 2 - 1)
    expected = session.generate(1)  # chunk 1: the cat
    session.set_prompt(clip.embeddings["a dog"])
    expected = torch.cat([expected, session.generate(3)], 2)
    got = torch.cat([comfy_to_latents(r) for r in runs], 2)
    assert ((got - expected).norm() / expected.norm()) <= 1e-5


def test_sampler_previews_every_chunk_through_comfyui_progress(models_dir, monkeypatch):
    from types import SimpleNamespace

    from streamvace.nodes import host

    model, vae = _load(models_dir)
    calls = []

    class ProgressBar:  # comfy.utils.ProgressBar's interface
        def __init__(self, total):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            calls.append((value, total, preview))

    fakes = {"comfy.utils": SimpleNamespace(ProgressBar=ProgressBar), "folder_paths": SimpleNamespace()}
    monkeypatch.setattr(host, "_comfy", fakes.get)
    latent = NODES["StreamVACESampler"]().sample(model=model, positive=[[torch.randn(1, 7, TEXT_DIM), {}]],
                                                 stream_id="v", reset=False, width=W, height=H, chunks=2, seed=0,
                                                 cache_policy="longlive", steps="1000,500", warp_steps=True,
                                                 preview_vae=vae)[0]
    previews = [(value, p) for value, _, p in calls if p is not None]
    assert [value for value, _ in previews] == [3, 6] and [v for v, _, _ in calls][-1] == 6
    kind, image, size = previews[0][1]
    assert kind == "JPEG" and image.size == (W, H) and size == 512
    latents = comfy_to_latents(latent)
    for chunk, (_, (_, image, _)) in enumerate(previews):  # each chunk's newest frame, decoded on its own
        with torch.no_grad():
            newest = vae.decode(latents[:, :, 3 * chunk:3 * chunk + 3])[0, :, -1].clamp(-1, 1)
        expected = ((newest + 1) * 127.5).round().permute(1, 2, 0)
        assert (torch.from_numpy(np.array(image)).float() - expected).abs().max() <= 1


def test_deep_forcing_sizes_are_sampler_inputs(models_dir):
    from streamvace.models.wan.kv_cache import DeepForcingPolicy, cache_policy
    from streamvace.nodes.streams import registry

    optional = NODES["StreamVACESampler"].INPUT_TYPES()["optional"]
    for name, default in (("deep_sink_frames", 10), ("deep_top_frames", 2)):  # the paper's S = 10, C = 16 - 10 - 4
        assert optional[name][0] == "INT" and optional[name][1]["default"] == default
        assert "deep_forcing" in optional[name][1]["tooltip"]
    model, _ = _load(models_dir)
    sampler = NODES["StreamVACESampler"]()
    args = dict(model=model, positive=[[torch.randn(1, 7, TEXT_DIM), {}]], stream_id="deep", reset=False, width=W,
                height=H, chunks=1, seed=0, cache_policy="deep_forcing", steps="1000,500", warp_steps=True,
                deep_sink_frames=2, deep_top_frames=3)
    assert sampler.sample(**args)[0]["stream_frame"] == 0
    policy = registry("wan").get("deep").stream.config.policy
    assert isinstance(policy, DeepForcingPolicy)
    assert (policy.sink_frames, policy.top_frames, policy.recent_frames, policy.budget_frames) == (2, 3, 4, 9)
    assert sampler.sample(**args)[0]["stream_frame"] == 3
    with pytest.raises(ValueError, match="sink_frames or top_frames"):  # 15 + 4 + 5 > 21, refused: nothing moves
        sampler.sample(**{**args, "deep_sink_frames": 15, "deep_top_frames": 5})
    assert sampler.sample(**args)[0]["stream_frame"] == 6
    assert sampler.sample(**{**args, "deep_top_frames": 4})[0]["stream_frame"] == 0  # new sizes: a new stream
    # other policies ignore the deep_forcing sizes
    longlive = {**args, "cache_policy": "longlive", "stream_id": "ll", "deep_sink_frames": 17, "deep_top_frames": 17}
    sampler.sample(**longlive)
    assert registry("wan").get("ll").stream.config.policy == cache_policy("longlive")


def test_the_first_chunk_of_a_size_says_the_blocks_compile(models_dir, monkeypatch):
    """A compiled model's first run of a size (and control set) shows a line on the node; later runs do not."""
    from types import SimpleNamespace

    from streamvace.nodes import host

    texts = []

    class ProgressBar:  # comfy.utils.ProgressBar's interface
        def __init__(self, total):
            pass

        def update_absolute(self, value, total=None, preview=None):
            pass

    server = SimpleNamespace(client_id="c", send_progress_text=lambda text, node, sid: texts.append((text, node, sid)))
    fakes = {"comfy.utils": SimpleNamespace(ProgressBar=ProgressBar), "folder_paths": SimpleNamespace(),
             "server": SimpleNamespace(PromptServer=SimpleNamespace(instance=server)),
             "comfy_execution.utils": SimpleNamespace(get_executing_context=lambda: SimpleNamespace(node_id="7"))}
    model, vae = _load(models_dir)
    model.compiled = True  # what the loader's compile option sets on CUDA
    control = NODES["StreamVACEControl"]().build(0.8, "stream", control_video=torch.rand(33, H, W, 3))[0]
    monkeypatch.setattr(host, "_comfy", fakes.get)
    sampler = NODES["StreamVACESampler"]()
    args = dict(model=model, positive=[[torch.randn(1, 7, TEXT_DIM), {}]], stream_id="c", reset=False, width=W,
                height=H, chunks=1, seed=0, cache_policy="longlive", steps="1000,500", warp_steps=True)
    for extra in ({}, {}, {"vae": vae, "control": control}, {"vae": vae, "control": control}):
        sampler.sample(**args, **extra)
    assert [(node, sid) for _, node, sid in texts] == [("7", "c"), ("7", "c")]
    assert f"{W}x{H}:" in texts[0][0] and f"{W}x{H} with control" in texts[1][0] and "compiling" in texts[0][0]
    model.compiled = False
    sampler.sample(**{**args, "width": 64})
    assert len(texts) == 2  # eager blocks compile nothing
