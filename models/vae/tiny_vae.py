"""A TAEHV-compatible tiny video VAE for Wan2.1 latents (`taew2_1.pth` / `taew2_1.safetensors` key layout).

Architecture (madebyollin/taehv): 2-D convs applied frame by frame; MemBlock(x, past) =
ReLU(conv3(cat[x, past]) + skip(x)) where `past` is the block's input at the previous time step (zeros
at the start); TPool merges `stride` consecutive frames through a 1x1 conv, TGrow splits one frame into
`stride` frames. Encoder TPool strides (2,2,1) and decoder TGrow strides (1,2,2) give 4x in time.
The whole network is causal with one frame of memory per MemBlock, so a stream is processed chunk by
chunk, all frames of a chunk in parallel, with each MemBlock's last input frame carried in the cache:
exactly the result of one pass over the whole clip.

Conventions, and how they are matched to the Wan VAE (see models/vae/cache.py):
- TAEHV works on [0,1] images in NTCHW order in the diffusion model's normalised latent space. This
  class takes and returns the engine's layouts: video [B,3,T,H,W] in [-1,1], normalised latents
  [B,16,t,h,w] (no scaling, as TAEHV).
- decode: latent i gives 4 frames; TAEHV drops the first 3 frames of a stream, so the first chunk of n
  latents gives 1 + 4(n-1) frames and later chunks 4n, like the Wan VAE (3 latents -> 9, then 12).
  A decoder cache made with mid_stream=True does not drop them: it takes over a running stream.
- encode: TAEHV turns each group of 4 frames into one latent. The first chunk (1 + 4k frames) gets 3
  copies of its frame 0 in front, so latent 0 = frame 0 and latent i = frames 4i-3 .. 4i, the same
  frames as the Wan VAE's latent i; later chunks have 4k frames. (TAEHV's own encode_video pads at the
  END instead, i.e. latent i = frames 4i .. 4i+3, three frames later: not chunkable with Wan's counts.)
- A checkpoint TGrow weight with more output channels than the model's (a stride the model does not
  use) is cut to its last-timestep channels when loading, as TAEHV's patch_tgrow_layers does.
"""

import torch
import torch.nn as nn

from ..checkpoint_io import CheckpointError, check_finite_weights, read_checkpoint, state_mismatch
from .latent_format import LATENT_CHANNELS
from .cache import SPATIAL_FACTOR, TEMPORAL_FACTOR, CacheStep, StreamingVAE, VAECache
from .checkpoints import vae_state_dict, wrong_file

EXPECTED_FILE = "a TAEHV tiny VAE for Wan2.1 (taew2_1.pth or taew2_1.safetensors)"
ENCODER_TIME_STRIDES = (2, 2, 1)  # TPool at encoder.{2,7,12}
DECODER_TIME_STRIDES = (1, 2, 2)  # TGrow at decoder.{7,13,19}
FRAMES_TO_TRIM = 3  # TAEHV drops the first 3 decoded frames of a stream


def _conv(n_in, n_out, **kwargs):
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    """Soft clamp of the latents to (-3, 3): tanh(x / 3) * 3."""

    def forward(self, x):
        """Apply the soft clamp."""
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """ReLU(conv(cat[x, past]) + skip(x)); `past` is this block's input one time step earlier."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in * 2, n_out), nn.ReLU(inplace=True), _conv(n_out, n_out),
                                  nn.ReLU(inplace=True), _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x, past):
        """x, past: [N*T, C, H, W]."""
        return self.act(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class TPool(nn.Module):
    """Merge `stride` consecutive frames into one (1x1 conv over their stacked channels)."""

    def __init__(self, n_f: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n_f * stride, n_f, 1, bias=False)

    def forward(self, x):
        """[N*T, C, H, W] -> [N*T/stride, C, H, W]."""
        return self.conv(x.reshape(-1, self.stride * x.shape[1], *x.shape[2:]))


class TGrow(nn.Module):
    """Split every frame into `stride` consecutive frames (1x1 conv to stride x channels)."""

    def __init__(self, n_f: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n_f, n_f * stride, 1, bias=False)

    def forward(self, x):
        """[N*T, C, H, W] -> [N*T*stride, C, H, W]."""
        return self.conv(x).reshape(-1, *x.shape[1:])


class TinyVAE(nn.Module, StreamingVAE):
    """TAEHV for Wan2.1 with streaming encode/decode through explicit per-stream caches (same API as WanVAE)."""

    latent_channels = LATENT_CHANNELS
    spatial_factor = SPATIAL_FACTOR
    temporal_factor = TEMPORAL_FACTOR

    def __init__(self, encoder_width: int = 64, decoder_widths=(256, 128, 64, 64), with_encoder: bool = True):
        super().__init__()
        e, (d0, d1, d2, d3) = encoder_width, decoder_widths
        self.encoder = None
        if with_encoder:
            stages = []
            for stride in ENCODER_TIME_STRIDES:
                stages += [TPool(e, stride), _conv(e, e, stride=2, bias=False), MemBlock(e, e), MemBlock(e, e),
                           MemBlock(e, e)]
            self.encoder = nn.Sequential(_conv(3, e), nn.ReLU(inplace=True), *stages, _conv(e, LATENT_CHANNELS))
        layers = [Clamp(), _conv(LATENT_CHANNELS, d0), nn.ReLU(inplace=True)]
        for (n_in, n_out), stride in zip(((d0, d1), (d1, d2), (d2, d3)), DECODER_TIME_STRIDES):
            layers += [MemBlock(n_in, n_in), MemBlock(n_in, n_in), MemBlock(n_in, n_in), nn.Upsample(scale_factor=2),
                       TGrow(n_in, stride), _conv(n_in, n_out, bias=False)]
        self.decoder = nn.Sequential(*layers, nn.ReLU(inplace=True), _conv(d3, 3))
        self._owner = f"TinyVAE(encoder={encoder_width}, decoder={tuple(decoder_widths)})"

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (inputs are cast to it)."""
        return self.decoder[1].weight.dtype

    @property
    def device(self) -> torch.device:
        """The weights' device (inputs are moved to it)."""
        return self.decoder[1].weight.device

    def new_encoder_cache(self) -> VAECache:
        """A fresh encoder stream: its first chunk must have 1 + 4k frames."""
        if self.encoder is None:
            raise ValueError("this tiny VAE was loaded without encoder weights, so it can only decode")
        return VAECache(self._owner, "encoder", sum(isinstance(b, MemBlock) for b in self.encoder))

    def new_decoder_cache(self, mid_stream: bool = False) -> VAECache:
        """A fresh decoder stream; mid_stream=True continues a stream another decoder started (no trimmed frames)."""
        return VAECache(self._owner, "decoder", sum(isinstance(b, MemBlock) for b in self.decoder), mid_stream)

    def _run(self, blocks: nn.Sequential, x: torch.Tensor, batch: int, step: CacheStep) -> torch.Tensor:
        """Apply `blocks` to all frames of a chunk at once, [N*T, C, H, W], carrying MemBlock memory in `step`."""
        slot = 0
        for block in blocks:
            if isinstance(block, MemBlock):
                frames = x.view(batch, -1, *x.shape[1:])
                previous = step.read(slot)
                before = torch.zeros_like(frames[:, :1]) if previous is None else previous.unsqueeze(1)
                past = torch.cat([before, frames[:, :-1]], dim=1).view_as(x)
                step.write(slot, frames[:, -1].clone())
                slot += 1
                x = block(x, past)
            else:
                x = block(x)
        return x

    @torch.no_grad()
    def encode(self, video: torch.Tensor, cache: VAECache = None, check_inputs: bool = True) -> torch.Tensor:
        """Video [B,3,T,H,W] in [-1,1] -> normalised float32 latents [B,16,t,H/8,W/8]; cache=None: a whole clip."""
        x, cache, shape, step = self._begin_encode(video, cache, check_inputs)
        if step.first:  # 3 copies of frame 0 in front: latent 0 = frame 0, latent i = frames 4i-3 .. 4i
            x = torch.cat([x[:, :, :1].expand(-1, -1, TEMPORAL_FACTOR - 1, -1, -1), x], dim=2)
        batch, _, frames, height, width = x.shape
        images = ((x + 1) * 0.5).transpose(1, 2).reshape(batch * frames, 3, height, width)
        out = self._run(self.encoder, images, batch, step)
        latents = out.view(batch, -1, *out.shape[1:]).transpose(1, 2).float().contiguous()
        cache.commit(step.slots, shape)
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, cache: VAECache = None, check_inputs: bool = True) -> torch.Tensor:
        """Normalised latents [B,16,t,h,w] -> video [B,3,T,8h,8w] in [-1,1] (VAE dtype); cache=None: a whole clip."""
        x, cache, shape, step = self._begin_decode(latents, cache, check_inputs)
        batch, channels, frames, height, width = x.shape
        out = self._run(self.decoder, x.transpose(1, 2).reshape(batch * frames, channels, height, width), batch, step)
        video = out.view(batch, -1, *out.shape[1:]).transpose(1, 2).clamp(0.0, 1.0) * 2.0 - 1.0
        if step.first:
            video = video[:, :, FRAMES_TO_TRIM:]
        cache.commit(step.slots, shape)
        return video.contiguous()


def load_tiny_vae(path: str, dtype: torch.dtype = torch.float32, device="cpu") -> TinyVAE:
    """Load a TAEHV-layout tiny VAE for Wan2.1 (.pth or .safetensors) through read_checkpoint."""
    state_dict = vae_state_dict(read_checkpoint(path), path)
    if not all(f"decoder.{i}.weight" in state_dict for i in (1, 8, 14, 20, 22)) or \
            "decoder.7.conv.weight" not in state_dict:
        raise wrong_file(path, state_dict, EXPECTED_FILE,
                         "Pick taew2_1 from the 'vae_approx' folder (the full Wan VAE loads with the Wan VAE loader).")
    latent_channels = state_dict["decoder.1.weight"].shape[1]
    if latent_channels != LATENT_CHANNELS or state_dict["decoder.22.weight"].shape[0] != 3:
        raise wrong_file(path, state_dict, EXPECTED_FILE,
                         "It is a tiny VAE for another latent space (taew2_2 is Wan2.2-5B); use taew2_1 for Wan2.1.")
    decoder_widths = tuple(state_dict[f"decoder.{i}.weight"].shape[0] for i in (1, 8, 14, 20))
    with_encoder = "encoder.0.weight" in state_dict
    encoder_width = state_dict["encoder.0.weight"].shape[0] if with_encoder else 64
    if with_encoder:
        strides = tuple(state_dict[f"encoder.{i}.conv.weight"].shape[1] // encoder_width for i in (2, 7, 12))
        if strides != ENCODER_TIME_STRIDES:
            raise wrong_file(path, state_dict, EXPECTED_FILE,
                             f"Its encoder pools time by {strides}, not {ENCODER_TIME_STRIDES} (4x) as Wan2.1 does.")
    with torch.device("meta"):
        vae = TinyVAE(encoder_width, decoder_widths, with_encoder)
    expected = vae.state_dict()
    state_dict = dict(state_dict)
    for index, block in enumerate(vae.decoder):
        key = f"decoder.{index}.conv.weight"
        if isinstance(block, TGrow) and key in state_dict and state_dict[key].shape[0] > expected[key].shape[0]:
            state_dict[key] = state_dict[key][-expected[key].shape[0]:].contiguous()  # last-timestep channels
    mismatch = state_mismatch(expected, state_dict)
    if mismatch:
        raise CheckpointError(f"{path}: looks like a TAEHV tiny VAE but does not match the taew2_1 layout: "
                              f"{mismatch}. Use taew2_1.pth or taew2_1.safetensors.")
    vae.load_state_dict(state_dict, assign=True)
    vae = vae.to(device=device, dtype=dtype).eval()
    check_finite_weights(vae.named_parameters(), path)
    return vae
