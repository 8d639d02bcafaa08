"""The DreamLite nodes end to end on a tiny model: load, stylize a stream across queue runs, measure flicker."""

import json
import math
import os

import pytest
import torch
from dreamlite_tiny import build_tiny_dreamlite, random_frames
from dreamlite_tiny import one_torch_thread  # noqa: F401 (an autouse fixture)
from safetensors.torch import save_file

from streamvace.models.dreamlite.loader import load_dreamlite
from streamvace.models.dreamlite.pipeline import StylizeOptions
from streamvace.models.dreamlite.temporal_lllite import TemporalLLLite
from streamvace.nodes.dreamlite_nodes import (StreamVACEDreamLiteLoader, StreamVACEDreamLiteStylize,
                                              StreamVACEFlickerMetric)
from streamvace.nodes.streams import registry

ADAPTER = "temporal_lllite_step001440.safetensors"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    folder = build_tiny_dreamlite(str(root / "diffusers" / "DreamLite-mobile"))
    adapter = TemporalLLLite(load_dreamlite(folder, dtype=torch.float32).unet, "all", cond_emb_dim=8, mlp_dim=16)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    os.makedirs(root / "controlnet")
    save_file({k: v.contiguous() for k, v in adapter.state_dict().items()}, str(root / "controlnet" / ADAPTER))
    return str(root)


@pytest.fixture()
def dreamlite(models_dir, monkeypatch):
    monkeypatch.setenv("STREAMVACE_MODELS_DIR", models_dir)
    spec = StreamVACEDreamLiteLoader.INPUT_TYPES()["required"]
    assert spec["model"][0] == ["DreamLite-mobile"]  # the pipeline folder only, not its unet/ vae/ sub-folders
    assert spec["lllite"][0] == ["none", ADAPTER]
    assert spec["dtype"][0] == ["bf16", "fp32"]  # one dtype vocabulary across the pack
    assert StreamVACEDreamLiteLoader.VALIDATE_INPUTS(dtype="float32") is True  # saved workflows of earlier versions
    assert "must be one of" in StreamVACEDreamLiteLoader.VALIDATE_INPUTS(dtype="fp16")
    (model,) = StreamVACEDreamLiteLoader().load("DreamLite-mobile", ADAPTER, "down_blocks", "float32", "off")
    assert StreamVACEDreamLiteLoader().load("DreamLite-mobile", ADAPTER, "down_blocks", "fp32", "off")[0] is model
    assert len(model.lllite_report.loaded) == 11 and len(model.lllite_report.ignored) == 28
    return model


def test_lists_offer_only_dreamlite_mobile_and_temporal_lllite(tmp_path, monkeypatch):
    """Pipelines by model_index.json's class, adapters by their .safetensors header."""
    for name, pipeline in (("DreamLite-mobile", "DreamLiteMobilePipeline"), ("DreamLite-base", "DreamLitePipeline"),
                           ("sdxl", "StableDiffusionXLPipeline")):
        os.makedirs(tmp_path / "diffusers" / name / "unet")
        with open(tmp_path / "diffusers" / name / "model_index.json", "w") as handle:
            json.dump({"_class_name": pipeline}, handle)
        with open(tmp_path / "diffusers" / name / "unet" / "config.json", "w") as handle:
            json.dump({}, handle)  # a part's folder is never offered as a pipeline
    os.makedirs(tmp_path / "controlnet")
    hook = "modules_dict.down_blocks__1__attentions__0__transformer_blocks__0__attn1__to_q"
    save_file({f"{hook}.conditioning1.0.weight": torch.zeros(4, 3, 4, 4), f"{hook}.down.0.weight": torch.zeros(8, 16)},
              str(tmp_path / "controlnet" / ADAPTER))
    save_file({"lllite_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.conditioning1.0.weight":
               torch.zeros(4, 3, 4, 4)}, str(tmp_path / "controlnet" / "kohya_lllite_sdxl.safetensors"))
    save_file({"controlnet_cond_embedding.conv_in.weight": torch.zeros(16, 3, 3, 3)},
              str(tmp_path / "controlnet" / "controlnet_depth_sdxl.safetensors"))
    torch.save({}, tmp_path / "controlnet" / "pickled.pth")  # only loading tells: offered, the loader explains
    monkeypatch.setenv("STREAMVACE_MODELS_DIR", str(tmp_path))
    spec = StreamVACEDreamLiteLoader.INPUT_TYPES()["required"]
    assert spec["model"][0] == ["DreamLite-mobile"]
    assert spec["lllite"][0] == ["none", "pickled.pth", ADAPTER]


def _stylize(dreamlite, frames, stream_id="main", reset=False, **overrides):
    knobs = dict(prompt="an oil painting style", stream_id=stream_id, reset=reset, width=64, height=64, steps=1,
                 batch_size=2, te_refresh_every=2, te_batch_one=False, cond_refresh_every=2, lllite_strength=1.0,
                 fixed_noise=False, seed=3)
    knobs.update(overrides)
    return StreamVACEDreamLiteStylize().stylize(dreamlite, frames, **knobs)[0]


def test_queued_runs_continue_one_stream(dreamlite):
    frames = random_frames(8, 64)
    whole = _stylize(dreamlite, frames, "whole", reset=True)
    first = _stylize(dreamlite, frames[:4], "queued", reset=True)
    second = _stylize(dreamlite, frames[4:], "queued")
    torch.testing.assert_close(torch.cat([first, second]), whole)
    assert registry("dreamlite").get("queued").frames_done == 8
    again = _stylize(dreamlite, frames[:4], "queued", reset=True)
    torch.testing.assert_close(again, first)
    assert math.isnan(StreamVACEDreamLiteStylize.IS_CHANGED())


def test_a_new_seed_every_run_continues_one_stream(dreamlite):
    """'randomize after generate' changes the seed every run: the stream goes on with fresh noise, never restarts."""
    frames = random_frames(6, 64)
    runs = [_stylize(dreamlite, frames[i:i + 2], "seeds", reset=i == 0, seed=seed)
            for i, seed in zip((0, 2, 4), (11, 52, 7))]
    assert registry("dreamlite").get("seeds").frames_done == 6  # one stream of 6 frames, not a restart per seed
    stylizer, options = dreamlite.stylizer(64, 64, 2), StylizeOptions("an oil painting style", 1, 2, False, 2)
    stream = stylizer.new_stream(11)  # the engine, continued by hand with each run's seed
    expected = [stylizer.stylize(frames[i:i + 2], stream, options, seed=seed)
                for i, seed in zip((0, 2, 4), (11, 52, 7))]
    for got, want in zip(runs, expected):
        torch.testing.assert_close(got, want)
    restarted = stylizer.stylize(frames[2:4], stylizer.new_stream(52), options)  # what a restart would give
    assert (runs[1] - restarted).abs().max() > 1e-3
    same_seed = _stylize(dreamlite, frames[:4], "kept", reset=True, seed=11)[2:]
    assert (runs[1] - same_seed).abs().max() > 1e-3  # the new seed did change the noise
    again = _stylize(dreamlite, frames[:2], "seeds", reset=True, seed=7)  # reset still restarts
    assert registry("dreamlite").get("seeds").frames_done == 2
    torch.testing.assert_close(again, stylizer.stylize(frames[:2], stylizer.new_stream(7), options))


def test_any_video_size_is_resized_and_alpha_dropped(dreamlite):
    frames = torch.cat([random_frames(3, 96), torch.ones(3, 96, 96, 1)], dim=-1)
    out = _stylize(dreamlite, frames, "resized", reset=True)
    assert out.shape == (3, 64, 64, 3) and out.dtype == torch.float32


def test_flicker_metric_node_reports_all_three_numbers():
    frames = random_frames(4, 64)
    error, sobel, energy, report = StreamVACEFlickerMetric().measure(frames, random_frames(4, 96))
    assert error >= 0 and sobel > 0 and energy > 0 and "warping error" in report


def test_loader_states_the_weights_licence():
    assert "CC BY-NC 4.0" in StreamVACEDreamLiteLoader.DESCRIPTION
    assert "CC BY-NC 4.0" in StreamVACEDreamLiteStylize.DESCRIPTION
