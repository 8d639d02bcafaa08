"""Gray control frames (VACE's colorization task)."""

import torch

from .frames import device_constant, gray_to_video, to_images

# VACE's GrayAnnotator calls cv2.cvtColor(frame, COLOR_BGR2GRAY) on an RGB frame, so its R and B weights are
# swapped relative to ITU-R BT.601 luma; its training data was made that way, so that is the default here.
VACE_WEIGHTS = (0.114, 0.587, 0.299)
BT601_WEIGHTS = (0.299, 0.587, 0.114)


class GrayAnnotator:
    """RGB frames -> 3-channel grey frames, one weighted sum per pixel; stateless, so chunks need no carry."""

    def __init__(self, vace_channel_order: bool = True):
        self.weights = VACE_WEIGHTS if vace_channel_order else BT601_WEIGHTS

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        """[3, T, H, W] in [-1, 1] -> grey [3, T, H, W] in [-1, 1]."""
        images = to_images(video)
        weights = device_constant(self.weights, images.device)
        return gray_to_video(torch.einsum("tchw,c->thw", images, weights))

    def reset(self) -> None:
        """Nothing to forget: every frame is independent."""
