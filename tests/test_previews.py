"""Chunk previews: the Wan2.1 latent-to-RGB map against a per-pixel computation, the tiny-VAE path, and the
preview tuple ComfyUI's progress hook takes."""

from types import SimpleNamespace

import torch

from streamvace.models.vae.latent_preview import (WAN21_LATENT_RGB_BIAS, WAN21_LATENT_RGB_FACTORS, chunk_preview,
                                                  latents_to_rgb)
from streamvace.models.vae.tiny_vae import TinyVAE
from streamvace.nodes import host

from _vae_helpers import TINY_TAE_WIDTHS, tiny_vae_state_dict


def test_latent_rgb_is_comfyuis_linear_map_per_pixel():
    latents = torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    rgb = latents_to_rgb(latents)
    assert rgb.shape == (1, 3, 4, 6, 3)
    for t, y, x in ((0, 0, 0), (2, 3, 5), (1, 2, 1)):
        for c in range(3):
            value = WAN21_LATENT_RGB_BIAS[c] + sum(float(latents[0, k, t, y, x]) * WAN21_LATENT_RGB_FACTORS[k][c]
                                                   for k in range(16))
            assert abs(float(rgb[0, t, y, x, c]) - min(1.0, max(0.0, (value + 1) / 2))) < 1e-5
    assert chunk_preview(latents).shape == (4, 6, 3)  # latent size without a VAE: the newest frame
    assert torch.equal(chunk_preview(latents), rgb[0, -1])


def test_tiny_vae_preview_is_the_chunks_last_decoded_frame():
    vae = TinyVAE(**TINY_TAE_WIDTHS)
    vae.load_state_dict(tiny_vae_state_dict(seed=1))
    latents = torch.randn(1, 16, 3, 4, 6)
    with torch.no_grad():
        frames = vae.decode(latents)
    preview = chunk_preview(latents, vae.eval())
    assert preview.shape == (32, 48, 3)
    assert torch.allclose(preview, ((frames[0, :, -1].clamp(-1, 1) + 1) / 2).permute(1, 2, 0), atol=1e-6)


def test_progress_sends_previews_the_way_comfyui_hooks_take_them(monkeypatch):
    calls = []

    class ProgressBar:
        def __init__(self, total):
            calls.append(("new", total))

        def update_absolute(self, value, total=None, preview=None):
            calls.append((value, total, preview))

    fakes = {"comfy.utils": SimpleNamespace(ProgressBar=ProgressBar), "folder_paths": SimpleNamespace(),
             "comfy.cli_args": SimpleNamespace(args=SimpleNamespace(preview_size=256))}
    monkeypatch.setattr(host, "_comfy", fakes.get)
    progress = host.Progress(4)
    progress.update(3)
    progress.preview(torch.full((8, 10, 3), 0.5))
    progress.update(5)  # never beyond the total
    assert calls[:2] == [("new", 4), (3, 4, None)] and calls[3] == (4, 4, None)
    kind, image, size = calls[2][2]
    assert calls[2][:2] == (3, 4) and kind == "JPEG" and image.size == (10, 8) and size == 256
    assert image.getpixel((0, 0)) == (128, 128, 128)
    monkeypatch.setattr(host, "_comfy", lambda name: None)
    silent = host.Progress(2)
    assert not silent.shows_previews
    silent.preview(torch.zeros(2, 2, 3))  # outside ComfyUI: nothing to show, nothing fails
