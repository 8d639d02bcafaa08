"""Cheap previews of a chunk being generated: the tiny VAE when there is one, else a linear latent-to-RGB map.

The linear map is the published Wan2.1 fit from ComfyUI (comfyanonymous/ComfyUI, comfy/latent_formats.py,
class Wan21: `latent_rgb_factors` and `latent_rgb_factors_bias`). ComfyUI applies it to the sampler's x0, which
lives in the model's normalised latent space (Wan21.process_in), so it takes our normalised latents as they are,
and its output is in [-1, 1]. 16 x 3 numbers per pixel: free next to a DiT forward.
"""

import torch

# rows: latent channels 0..15; columns: R, G, B (ComfyUI comfy/latent_formats.py, Wan21)
WAN21_LATENT_RGB_FACTORS = (
    (-0.1299, -0.1692, 0.2932), (0.0671, 0.0406, 0.0442), (0.3568, 0.2548, 0.1747), (0.0372, 0.2344, 0.1420),
    (0.0313, 0.0189, -0.0328), (0.0296, -0.0956, -0.0665), (-0.3477, -0.4059, -0.2925), (0.0166, 0.1902, 0.1975),
    (-0.0412, 0.0267, -0.1364), (-0.1293, 0.0740, 0.1636), (0.0680, 0.3019, 0.1128), (0.0032, 0.0581, 0.0639),
    (-0.1251, 0.0927, 0.1699), (0.0060, -0.0633, 0.0005), (0.3477, 0.2275, 0.2950), (0.1984, 0.0913, 0.1861),
)
WAN21_LATENT_RGB_BIAS = (-0.1835, -0.0868, -0.3360)


def latents_to_rgb(latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents [B, 16, T, h, w] -> approximate frames [B, T, h, w, 3] in [0, 1] (at latent size)."""
    if latents.ndim != 5 or latents.shape[1] != len(WAN21_LATENT_RGB_FACTORS):
        raise ValueError(f"a latent preview needs Wan2.1 latents [B, 16, T, h, w], got {tuple(latents.shape)}")
    factors = torch.tensor(WAN21_LATENT_RGB_FACTORS, dtype=torch.float32, device=latents.device)
    bias = torch.tensor(WAN21_LATENT_RGB_BIAS, dtype=torch.float32, device=latents.device)
    rgb = torch.einsum("bcthw,cr->bthwr", latents.float(), factors) + bias
    return ((rgb + 1.0) * 0.5).clamp(0.0, 1.0)


@torch.inference_mode()
def chunk_preview(latents: torch.Tensor, vae=None) -> torch.Tensor:
    """The newest frame of a chunk of normalised latents as [H, W, 3] in [0, 1] on the CPU.

    With a VAE (meant for the tiny one) the chunk is decoded on its own, at full size; without, the
    linear map gives a frame at latent size (1/8 of the video's width and height).
    """
    if vae is None:
        return latents_to_rgb(latents[:1, :, -1:])[0, 0].cpu()
    video = vae.decode(latents[:1].to(vae.device, vae.dtype))  # [1, 3, T, H, W] in [-1, 1]
    return ((video[0, :, -1].float().clamp(-1, 1) + 1.0) * 0.5).permute(1, 2, 0).cpu()
