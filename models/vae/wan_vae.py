"""The Wan2.1 causal video VAE (z 16, 8x8 spatial, 4x temporal) with explicit per-stream caches.

Module tree and key names are those of Wan-AI's `Wan2.1_VAE.pth` (also Comfy-Org's
`wan_2.1_vae.safetensors`): `encoder.{conv1,downsamples,middle,head}`, `conv1`, `conv2`,
`decoder.{conv1,middle,upsamples,head}`. Widths, depth and the temporal layout are read from the
weights, so the same code loads the real file and tiny test VAEs.

Usage (normalised latents in and out; see models/vae/cache.py for the chunk frame-count rules):

    vae = load_wan_vae("Wan2.1_VAE.pth", dtype=torch.bfloat16, device="cuda")
    enc = vae.new_encoder_cache()
    z0 = vae.encode(frames_0_to_8, enc)      # 9 frames -> 3 latents
    z1 = vae.encode(frames_9_to_20, enc)     # 12 frames -> 3 latents
    dec = vae.new_decoder_cache()
    vae.decode(z0, dec), vae.decode(z1, dec) # 9 frames, then 12
"""

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint_io import CheckpointError, check_finite_weights, read_checkpoint, state_mismatch
from .latent_format import LATENT_CHANNELS, denormalize_latents, normalize_latents
from .cache import SPATIAL_FACTOR, TEMPORAL_FACTOR, StreamingVAE, VAECache
from .checkpoints import vae_state_dict, wrong_file
from .wan_vae_blocks import AttentionBlock, CausalConv3d, Resample, ResidualBlock, RMSNorm, number_cache_slots

EXPECTED_FILE = "the Wan2.1 VAE (Wan2.1_VAE.pth or wan_2.1_vae.safetensors)"


@dataclass(frozen=True)
class WanVAEConfig:
    """Sizes of a Wan2.1-layout VAE; the released file is dim 96, z 16, mult (1,2,4,4), 2 res blocks."""

    dim: int = 96
    z_dim: int = LATENT_CHANNELS
    dim_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple = (False, True, True)


class Encoder3d(nn.Module):
    """Video [B,3,T,H,W] -> [B,2z,t,H/8,W/8] (mean and log-variance), causal in time."""

    def __init__(self, cfg: WanVAEConfig):
        super().__init__()
        dims = [cfg.dim * m for m in (1,) + tuple(cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i < len(cfg.dim_mult) - 1:
                layers.append(Resample(out_dim, "downsample3d" if cfg.temporal_downsample[i] else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)
        self.middle = nn.Sequential(ResidualBlock(dims[-1], dims[-1]), AttentionBlock(dims[-1]),
                                    ResidualBlock(dims[-1], dims[-1]))
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], cfg.z_dim * 2, 3, padding=1))

    def forward(self, x, step):
        """Encode one pass of frames, continuing the stream held by `step`."""
        x = self.conv1(x, step)
        for layer in (*self.downsamples, *self.middle):
            x = layer(x, step)
        norm, _, conv = self.head
        return norm.then_silu_conv(conv, x, step)


class Decoder3d(nn.Module):
    """Latents [B,z,t,h,w] -> video [B,3,T,8h,8w], causal in time."""

    def __init__(self, cfg: WanVAEConfig):
        super().__init__()
        mult = tuple(cfg.dim_mult)
        dims = [cfg.dim * m for m in (mult[-1],) + mult[::-1]]
        temporal_upsample = tuple(cfg.temporal_downsample)[::-1]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0]))
        layers = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2  # every upsampler halves the width
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i < len(mult) - 1:
                layers.append(Resample(out_dim, "upsample3d" if temporal_upsample[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*layers)
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, padding=1))

    def forward(self, x, step):
        """Decode one pass of latents, continuing the stream held by `step`."""
        x = self.conv1(x, step)
        for layer in (*self.middle, *self.upsamples):
            x = layer(x, step)
        norm, _, conv = self.head
        return norm.then_silu_conv(conv, x, step)


class WanVAE(nn.Module, StreamingVAE):
    """Wan2.1 VAE with streaming encode/decode; caches are explicit objects, one per stream of frames."""

    latent_channels = LATENT_CHANNELS
    spatial_factor = SPATIAL_FACTOR
    temporal_factor = TEMPORAL_FACTOR

    def __init__(self, config: WanVAEConfig = WanVAEConfig()):
        super().__init__()
        if config.z_dim != LATENT_CHANNELS:
            raise ValueError(f"the Wan2.1 VAE has {LATENT_CHANNELS} latent channels, config asks for {config.z_dim}")
        self.config = config
        self.encoder = Encoder3d(config)
        self.conv1 = CausalConv3d(config.z_dim * 2, config.z_dim * 2, 1)
        self.conv2 = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder3d(config)
        self._encoder_slots = number_cache_slots(self.encoder)
        self._decoder_slots = number_cache_slots(self.decoder)
        self._owner = f"WanVAE(dim={config.dim}, mult={tuple(config.dim_mult)})"
        self.channels_last = False  # use_fast_kernels: activations and conv weights stored channels-last
        self.auto_fast_kernels = True  # switch them on at the first call on a CUDA device (False: never)

    def use_fast_kernels(self, enabled: bool = True, fuse: bool = None) -> "WanVAE":
        """Channels-last convs (cuDNN's native tensor-core layout, autotuned per shape) and, with `fuse` (default: as
        `enabled`), each residual block's bias + RMSNorm + SiLU and bias + residual sums in fused passes (Triton
        kernels on CUDA, models/vae/vae_kernels.py). Same arithmetic as the plain path up to round-off; returns self."""
        layouts = {5: torch.channels_last_3d, 4: torch.channels_last}
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                layout = layouts[module.weight.dim()] if enabled else torch.contiguous_format
                module.weight.data = module.weight.data.contiguous(memory_format=layout)
        self.channels_last, self.auto_fast_kernels = enabled, False
        fuse = enabled if fuse is None else fuse
        for module in self.modules():
            if isinstance(module, RMSNorm):
                module.fused = fuse
        return self

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        if self.auto_fast_kernels and x.is_cuda:
            self.use_fast_kernels()
        return x.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else x

    def _tuned_convs(self):
        """cuDNN autotuning for the calls of a channels-last VAE only (the process-wide switch is left as found)."""
        if not (self.channels_last and self.device.type == "cuda"):
            return contextlib.nullcontext()
        return _cudnn_benchmark()

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (inputs are cast to it)."""
        return self.conv2.weight.dtype

    @property
    def device(self) -> torch.device:
        """The weights' device (inputs are moved to it)."""
        return self.conv2.weight.device

    def _decoder_input(self, latents: torch.Tensor) -> torch.Tensor:
        return denormalize_latents(latents.to(device=self.device, dtype=torch.float32)).to(self.dtype)

    def new_encoder_cache(self) -> VAECache:
        """A fresh encoder stream: its first chunk must have 1 + 4k frames."""
        return VAECache(self._owner, "encoder", self._encoder_slots)

    def new_decoder_cache(self, mid_stream: bool = False) -> VAECache:
        """A fresh decoder stream; mid_stream=True continues a stream another decoder started (4 frames per latent)."""
        return VAECache(self._owner, "decoder", self._decoder_slots, mid_stream=mid_stream)

    @torch.no_grad()
    def encode(self, video: torch.Tensor, cache: VAECache = None, check_inputs: bool = True) -> torch.Tensor:
        """Video [B,3,T,H,W] in [-1,1] -> normalised float32 latents [B,16,t,H/8,W/8]; cache=None: a whole clip."""
        x, cache, shape, step = self._begin_encode(video, cache, check_inputs)
        with self._tuned_convs():
            latents = self._encode_frames(self._layout(x), step)
        cache.commit(step.slots, shape)
        return latents

    def _encode_frames(self, x: torch.Tensor, step) -> torch.Tensor:
        pieces = []
        if step.first:  # frame 0 alone becomes latent 0
            pieces.append(self.encoder(x[:, :, :1], step))
            step.first, x = False, x[:, :, 1:]
        if x.shape[2]:
            pieces.append(self.encoder(x, step))
        moments = torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0]
        z = self.config.z_dim  # conv1 is 1x1x1: only its mean half is needed
        mean = F.conv3d(moments, self.conv1.weight[:z], self.conv1.bias[:z])
        return normalize_latents(mean.float()).contiguous()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, cache: VAECache = None, check_inputs: bool = True) -> torch.Tensor:
        """Normalised latents [B,16,t,h,w] -> video [B,3,T,8h,8w] in [-1,1] (VAE dtype); cache=None: a whole clip."""
        raw, cache, shape, step = self._begin_decode(latents, cache, check_inputs)
        with self._tuned_convs():
            video = self._decode_latents(self.conv2(self._layout(raw)), step)
        cache.commit(step.slots, shape)
        return video

    def _decode_latents(self, x: torch.Tensor, step) -> torch.Tensor:
        pieces = []
        if step.first:  # latent 0 alone decodes to frame 0
            pieces.append(self.decoder(x[:, :, :1], step))
            step.first, x = False, x[:, :, 1:]
        if x.shape[2]:
            pieces.append(self.decoder(x, step))
        video = torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0]
        return video.clamp_(-1.0, 1.0).contiguous()


@contextlib.contextmanager
def _cudnn_benchmark():
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def config_from_state_dict(state_dict: dict, path: str = "<state dict>") -> WanVAEConfig:
    """Read width, latent size, depth and temporal layout from a Wan2.1-layout state dict."""
    required = ("encoder.conv1.weight", "encoder.head.2.weight", "conv1.weight", "conv2.weight",
                "decoder.conv1.weight")
    if not all(k in state_dict for k in required):
        raise wrong_file(path, state_dict, EXPECTED_FILE,
                         "Pick the Wan2.1 VAE from the 'vae' folder (tiny VAEs load with the tiny VAE loader).")
    dim = state_dict["encoder.conv1.weight"].shape[0]
    z_dim = state_dict["conv2.weight"].shape[0]
    if z_dim != LATENT_CHANNELS or any(".downsamples.0.downsamples." in k for k in state_dict):
        raise wrong_file(path, state_dict, EXPECTED_FILE,
                         "StreamVACE runs Wan2.1 (16 latent channels); the Wan2.2 VAE does not fit it.")
    mult, res_blocks, temporal, count, width = [], [], [], 0, dim
    indices = sorted({int(k.split(".")[2]) for k in state_dict if k.startswith("encoder.downsamples.")})
    for i in indices:
        prefix = f"encoder.downsamples.{i}."
        if prefix + "residual.2.weight" in state_dict:
            width, count = state_dict[prefix + "residual.2.weight"].shape[0], count + 1
        elif prefix + "resample.1.weight" in state_dict:
            mult.append(width // dim)
            res_blocks.append(count)
            temporal.append(prefix + "time_conv.weight" in state_dict)
            count = 0
        else:
            raise wrong_file(path, state_dict, EXPECTED_FILE,
                             f"Its encoder layer {i} is neither a residual block nor a resampler "
                             "(attention inside the encoder stages is not part of Wan2.1).")
    mult.append(width // dim)
    res_blocks.append(count)
    if len(set(res_blocks)) != 1:
        raise wrong_file(path, state_dict, EXPECTED_FILE, f"Its stages have {res_blocks} residual blocks.")
    return WanVAEConfig(dim=dim, z_dim=z_dim, dim_mult=tuple(mult), num_res_blocks=res_blocks[0],
                        temporal_downsample=tuple(temporal))


def load_wan_vae(path: str, dtype: torch.dtype = torch.float32, device="cpu") -> WanVAE:
    """Load a Wan2.1 VAE file (.pth or .safetensors, original key layout) through read_checkpoint."""
    state_dict = vae_state_dict(read_checkpoint(path), path)
    config = config_from_state_dict(state_dict, path)
    with torch.device("meta"):
        vae = WanVAE(config)
    expected = vae.state_dict()
    mismatch = state_mismatch(expected, state_dict)
    if mismatch:
        raise CheckpointError(f"{path}: looks like a Wan2.1-layout VAE ({config}) but does not match it: {mismatch}. "
                              "The file is damaged or a variant StreamVACE does not know; use Wan2.1_VAE.pth or "
                              "wan_2.1_vae.safetensors.")
    vae.load_state_dict(state_dict, assign=True)
    vae = vae.to(device=device, dtype=dtype).eval()
    check_finite_weights(vae.named_parameters(), path)
    return vae
