"""The VAE nodes: loaders find files in the 'vae' / 'vae_approx' folders, and the streaming encode/decode nodes
continue their stream across queue runs (keyed by stream_id), convert LATENT at the boundary, and reset."""

import pytest
import torch
from _vae_helpers import random_video, relative_error, save_weights, tiny_vae_state_dict, wan_vae_state_dict

from streamvace.models.vae.latent_format import denormalize_latents
from streamvace.nodes import NODE_CLASS_MAPPINGS
from streamvace.nodes.convert import video_to_image
from streamvace.nodes.streams import registry

LOAD_WAN, LOAD_TINY = NODE_CLASS_MAPPINGS["StreamVACELoadWanVAE"], NODE_CLASS_MAPPINGS["StreamVACELoadTinyVAE"]
DECODE, ENCODE = NODE_CLASS_MAPPINGS["StreamVACEVAEDecodeStream"], NODE_CLASS_MAPPINGS["StreamVACEVAEEncodeStream"]


@pytest.fixture()
def models_dir(tmp_path, monkeypatch):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae_approx").mkdir()
    save_weights(wan_vae_state_dict(seed=5), tmp_path / "vae" / "wan_2.1_vae.safetensors")
    save_weights(tiny_vae_state_dict(seed=6), tmp_path / "vae_approx" / "taew2_1.pth")
    monkeypatch.setenv("STREAMVACE_MODELS_DIR", str(tmp_path))
    yield tmp_path
    registry("vae_decode").clear()
    registry("vae_encode").clear()


def _load(models_dir):
    assert "wan_2.1_vae.safetensors" in LOAD_WAN.INPUT_TYPES()["required"]["vae_name"][0]
    assert "taew2_1.pth" in LOAD_TINY.INPUT_TYPES()["required"]["vae_name"][0]
    wan = LOAD_WAN().load("wan_2.1_vae.safetensors", "fp32")[0]
    tiny = LOAD_TINY().load("taew2_1.pth", "fp32")[0]
    return wan, tiny


def test_encode_and_decode_streams_continue_across_queue_runs(models_dir):
    wan, _ = _load(models_dir)
    video = random_video(21, seed=14)
    image = video_to_image(video[0])  # ComfyUI IMAGE [T, H, W, 3] in [0, 1]
    runs = [ENCODE().encode(wan, image[a:b], "cam", False)[0] for a, b in ((0, 9), (9, 21))]
    latents = wan.encode(video)
    assert relative_error(torch.cat([r["samples"] for r in runs], 2), denormalize_latents(latents)) <= 1e-4
    frames = [DECODE().decode(wan, run, "cam", False)[0] for run in runs]
    assert [f.shape for f in frames] == [(9, 32, 48, 3), (12, 32, 48, 3)]
    assert relative_error(torch.cat(frames), video_to_image(wan.decode(latents)[0])) <= 1e-4
    again = DECODE().decode(wan, runs[0], "cam", True)[0]  # reset: a first chunk again
    assert torch.equal(again, frames[0])


def test_decode_stream_can_switch_to_the_tiny_vae_between_runs(models_dir):
    wan, tiny = _load(models_dir)
    latents = {"samples": torch.randn(1, 16, 3, 4, 6)}
    counts = [DECODE().decode(vae, latents, "preview", False)[0].shape[0] for vae in (wan, tiny, tiny, wan)]
    assert counts == [9, 12, 12, 12]
    assert DECODE().decode(tiny, latents, "other", False)[0].shape[0] == 9  # streams are independent


def test_nodes_report_bad_input_and_keep_the_stream(models_dir):
    wan, tiny = _load(models_dir)
    image = video_to_image(random_video(9, seed=15)[0])
    ENCODE().encode(wan, image, "s", False)
    with pytest.raises(ValueError, match="multiple of 4"):
        ENCODE().encode(wan, image, "s", False)
    with pytest.raises(ValueError, match="cannot change mid-stream"):
        ENCODE().encode(tiny, image[:8], "s", False)
    assert ENCODE().encode(wan, image[:8], "s", False)[0]["samples"].shape[2] == 2  # the stream went on
    with pytest.raises(TypeError, match="LATENT"):
        DECODE().decode(wan, torch.zeros(1, 16, 1, 4, 4), "s", False)
    assert DECODE.IS_CHANGED() != DECODE.IS_CHANGED()  # NaN: re-run on every queue


def test_latent_conversion_at_the_node_boundary():
    from streamvace.models.vae.latent_format import WAN21_LATENT_MEAN, WAN21_LATENT_STD, comfy_to_latents, latents_to_comfy

    latents = torch.randn(2, 16, 3, 4, 6)
    raw = latents_to_comfy(latents)["samples"]
    assert raw.dtype == torch.float32 and raw.device.type == "cpu"
    assert torch.allclose(raw[:, 5], latents[:, 5] * WAN21_LATENT_STD[5] + WAN21_LATENT_MEAN[5])
    assert torch.allclose(comfy_to_latents({"samples": raw}), latents, atol=1e-6)
    with pytest.raises(ValueError, match="SD: 4 channels"):
        comfy_to_latents({"samples": torch.zeros(1, 4, 8, 8)})


def test_vae_lists_offer_only_vaes_of_their_kind(models_dir):
    from safetensors.torch import save_file

    save_weights(tiny_vae_state_dict(seed=6), models_dir / "vae_approx" / "taew2_1.safetensors")
    save_weights(tiny_vae_state_dict(seed=6), models_dir / "vae" / "taew2_1.safetensors")  # in the wrong folder
    save_file({"encoder.down.0.block.0.conv1.weight": torch.zeros(1)}, str(models_dir / "vae" / "sdxl_vae.safetensors"))
    save_file({"decoder.1.weight": torch.zeros(4, 4, 3, 3)}, str(models_dir / "vae_approx" / "taesd_decoder.safetensors"))
    assert LOAD_WAN.INPUT_TYPES()["required"]["vae_name"][0] == ["wan_2.1_vae.safetensors"]
    assert LOAD_TINY.INPUT_TYPES()["required"]["vae_name"][0] == ["taew2_1.pth", "taew2_1.safetensors"]
