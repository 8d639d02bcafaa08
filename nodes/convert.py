"""Conversions between ComfyUI's tensor types and the engine's layouts (used by every node)."""

import torch


def image_to_video(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [T,H,W,C] in [0,1] -> video [C,T,H,W] in [-1,1] (alpha dropped)."""
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an IMAGE batch [frames, height, width, 3], got shape {tuple(image.shape)}")
    if image.shape[0] == 0:
        raise ValueError("the IMAGE input has no frames")
    frames = image[..., :3] if image.shape[-1] != 1 else image.expand(*image.shape[:-1], 3)
    return frames.permute(3, 0, 1, 2).float() * 2.0 - 1.0


def video_to_image(video: torch.Tensor) -> torch.Tensor:
    """Video [C,T,H,W] in [-1,1] -> ComfyUI IMAGE [T,H,W,3] in [0,1] on the CPU, float32."""
    return ((video.float().clamp(-1, 1) + 1.0) * 0.5).permute(1, 2, 3, 0).cpu().contiguous()


def mask_to_video(mask: torch.Tensor) -> torch.Tensor:
    """ComfyUI MASK [T,H,W] (or [H,W]) in [0,1] -> [1,T,H,W] float."""
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise ValueError(f"expected a MASK [frames, height, width], got shape {tuple(mask.shape)}")
    return mask[None].float()


def video_to_mask(mask: torch.Tensor) -> torch.Tensor:
    """[1,T,H,W] -> ComfyUI MASK [T,H,W] on the CPU."""
    return mask[0].float().cpu().contiguous()


def conditioning_to_embedding(conditioning) -> torch.Tensor:
    """ComfyUI CONDITIONING [[embedding, {...}], ...] -> the first entry's embedding tensor."""
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise ValueError("the CONDITIONING input is empty: connect a CLIPTextEncode (umT5-XXL, Load CLIP type wan) "
                         "to 'positive'")
    entry = conditioning[0]
    if not isinstance(entry, (list, tuple)) or not entry or not isinstance(entry[0], torch.Tensor):
        found = type(entry[0] if isinstance(entry, (list, tuple)) and entry else entry).__name__
        raise ValueError(f"the CONDITIONING input is not ComfyUI conditioning ([[embedding tensor, {{...}}]]): it holds "
                         f"a {found} where the embedding should be; connect a CLIPTextEncode to 'positive'")
    return entry[0]
