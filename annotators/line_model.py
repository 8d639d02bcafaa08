"""The learned line-drawing generator used by VACE's scribble annotator (and the 'lineart' informative-drawings nets).

Architecture (Chan et al., "Learning to generate line drawings", as used by VACE's ContourInference): reflection-pad
+ 7x7 conv to 64, two stride-2 convs, N residual blocks, two transposed convs back up, 7x7 conv to 1 channel,
sigmoid; instance norm without affine weights. Output: dark lines on white, in [0, 1].
Weight files: VACE-Annotators `scribble/anime_style/netG_A_latest.pth` (3 residual blocks), lllyasviel's
`sk_model.pth` / `sk_model2.pth`. The block count and widths are read from the file.
"""

import re

import torch
from torch import nn

from ..models.checkpoint_io import CheckpointError, key_summary, read_checkpoint


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels))

    def forward(self, x):
        """x + the block's residual."""
        return x + self.conv_block(x)


class LineDrawingNet(nn.Module):
    """RGB [B, 3, H, W] in [0, 1] -> line drawing [B, 1, H, W] in [0, 1] (dark lines on white)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 1, residual_blocks: int = 3, width: int = 64):
        super().__init__()
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(in_channels, width, 7), nn.InstanceNorm2d(width),
                                    nn.ReLU(True))
        self.model1 = nn.Sequential(
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(width * 2), nn.ReLU(True),
            nn.Conv2d(width * 2, width * 4, 3, stride=2, padding=1), nn.InstanceNorm2d(width * 4), nn.ReLU(True))
        self.model2 = nn.Sequential(*[_ResidualBlock(width * 4) for _ in range(residual_blocks)])
        self.model3 = nn.Sequential(
            nn.ConvTranspose2d(width * 4, width * 2, 3, stride=2, padding=1, output_padding=1),
            nn.InstanceNorm2d(width * 2), nn.ReLU(True),
            nn.ConvTranspose2d(width * 2, width, 3, stride=2, padding=1, output_padding=1),
            nn.InstanceNorm2d(width), nn.ReLU(True))
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(width, out_channels, 7), nn.Sigmoid())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Line drawing of a batch of images (any size: padded to a multiple of 4 and cropped back)."""
        height, width = images.shape[-2:]
        pad_h, pad_w = (-height) % 4, (-width) % 4
        x = nn.functional.pad(images, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else images
        x = self.model4(self.model3(self.model2(self.model1(self.model0(x)))))
        return x[..., :height, :width]


def load_line_model(path: str) -> LineDrawingNet:
    """Build a LineDrawingNet sized from a weight file's tensors and load it (CPU, float32, eval)."""
    state = read_checkpoint(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()} if isinstance(state, dict) else state
    if not isinstance(state, dict) or "model0.1.weight" not in state or "model4.1.weight" not in state:
        found = key_summary(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path}: not a line-drawing generator (expected keys model0.1.weight ... model4.1.weight as in VACE's "
            f"scribble/anime_style/netG_A_latest.pth or sk_model.pth); found {found}. "
            "Put netG_A_latest.pth from ali-vilab/VACE-Annotators in the 'scribble' model folder.")
    first = state["model0.1.weight"]
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"model2\.(\d+)\.", k))}
    model = LineDrawingNet(first.shape[1], state["model4.1.weight"].shape[0], len(blocks), first.shape[0])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: the line-drawing weights do not fit the architecture: {error}") from error
    return model.eval().requires_grad_(False)
