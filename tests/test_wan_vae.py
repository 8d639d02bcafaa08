"""The Wan2.1 causal VAE: loads the real key layout, matches diffusers' AutoencoderKLWan, and streams chunk by chunk
with explicit caches exactly as one whole-clip pass."""

import pytest
import torch
from _vae_helpers import random_video, relative_error, save_weights, tiny_vae_state_dict, wan_vae_state_dict
from diffusers import AutoencoderKL, AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

from streamvace.models.checkpoint_io import CheckpointError
from streamvace.models.vae.latent_format import WAN21_LATENT_MEAN, WAN21_LATENT_STD
from streamvace.models.vae.cache import frames_per_chunk, latents_per_chunk
from streamvace.models.vae.wan_vae import WanVAE, WanVAEConfig, load_wan_vae

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan_vae")
    state_dict = wan_vae_state_dict(seed=1)
    return {"state_dict": state_dict,
            "pth": save_weights(state_dict, folder / "Wan2.1_VAE.pth"),
            "safetensors": save_weights(state_dict, folder / "wan_2.1_vae.safetensors"),
            "folder": folder}


@pytest.fixture(scope="module")
def vae(weights):
    return load_wan_vae(weights["safetensors"])


@pytest.fixture(scope="module")
def reference(weights):
    """diffusers' AutoencoderKLWan with the same weights, converted by diffusers' own single-file converter."""
    model = AutoencoderKLWan(base_dim=8, z_dim=16).eval()
    model.load_state_dict(convert_wan_vae_to_diffusers(dict(weights["state_dict"])), strict=True)
    return model


def _stats(model):
    mean = torch.tensor(model.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(model.config.latents_std).view(1, 16, 1, 1, 1)
    return mean, std


@pytest.fixture(scope="module")
def clip(reference):
    """A 13-frame clip with diffusers' normalised latents and decoded frames."""
    video = random_video(13, seed=3)
    mean, std = _stats(reference)
    with torch.no_grad():
        latents = (reference.encode(video).latent_dist.mean - mean) / std
        decoded = reference.decode(latents * std + mean).sample
    assert 0.05 < (decoded.abs() < 1).float().mean()  # the clamp does not hide everything
    return video, latents, decoded


def test_both_file_formats_load_the_original_key_layout(weights):
    from_pth, from_st = load_wan_vae(weights["pth"]), load_wan_vae(weights["safetensors"])
    assert len(weights["state_dict"]) == 194  # as Wan2.1_VAE.pth
    assert from_pth.config == WanVAEConfig(dim=8)
    for (name, a), b in zip(from_pth.state_dict().items(), from_st.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, weights["state_dict"][name]), name


def test_full_size_tree_is_the_released_one():
    with torch.device("meta"):
        ours, theirs = WanVAE(), AutoencoderKLWan()
    assert sum(p.numel() for p in ours.parameters()) == 126_892_531  # Wan2.1_VAE.pth
    converted = convert_wan_vae_to_diffusers(dict(ours.state_dict()))
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_constants_match_diffusers(reference):
    assert tuple(reference.config.latents_mean) == WAN21_LATENT_MEAN
    assert tuple(reference.config.latents_std) == WAN21_LATENT_STD


def test_interface(vae):
    assert (vae.latent_channels, vae.spatial_factor, vae.temporal_factor) == (16, 8, 4)


def test_whole_clip_matches_diffusers(vae, clip):
    video, latents, decoded = clip
    assert relative_error(vae.encode(video), latents) <= TOLERANCE
    assert relative_error(vae.decode(latents), decoded) <= TOLERANCE


@pytest.mark.parametrize("chunks", [(5, 4, 4), (9, 4), (1, 4, 4, 4), (1, 12)])
def test_chunked_encode_matches_whole_clip_and_diffusers(vae, clip, chunks):
    video, latents, _ = clip
    cache, pieces, start = vae.new_encoder_cache(), [], 0
    for size in chunks:
        pieces.append(vae.encode(video[:, :, start:start + size], cache))
        start += size
    assert [p.shape[2] for p in pieces] == [latents_per_chunk(size, i == 0) for i, size in enumerate(chunks)]
    streamed = torch.cat(pieces, dim=2)
    assert relative_error(streamed, vae.encode(video)) <= TOLERANCE
    assert relative_error(streamed, latents) <= TOLERANCE


@pytest.mark.parametrize("chunks", [(2, 1, 1), (1, 1, 1, 1), (3, 1), (1, 3)])
def test_chunked_decode_matches_whole_clip_and_diffusers(vae, clip, chunks):
    _, latents, decoded = clip
    cache, pieces, start = vae.new_decoder_cache(), [], 0
    for size in chunks:
        pieces.append(vae.decode(latents[:, :, start:start + size], cache))
        start += size
    assert [p.shape[2] for p in pieces] == [frames_per_chunk(size, i == 0) for i, size in enumerate(chunks)]
    streamed = torch.cat(pieces, dim=2)
    assert relative_error(streamed, vae.decode(latents)) <= TOLERANCE
    assert relative_error(streamed, decoded) <= TOLERANCE


def test_engine_chunks_are_9_then_12_frames(vae):
    assert (latents_per_chunk(9, True), latents_per_chunk(12, False)) == (3, 3)
    assert (frames_per_chunk(3, True), frames_per_chunk(3, False)) == (9, 12)
    video = random_video(21, seed=5)
    encoder, decoder = vae.new_encoder_cache(), vae.new_decoder_cache()
    first, second = vae.encode(video[:, :, :9], encoder), vae.encode(video[:, :, 9:], encoder)
    assert first.shape == second.shape == (1, 16, 3, 4, 6)
    assert vae.decode(first, decoder).shape[2] == 9 and vae.decode(second, decoder).shape[2] == 12


def test_batches_are_independent(vae):
    video = random_video(9, batch=2, seed=6)
    both = vae.encode(video)
    assert relative_error(both[1:], vae.encode(video[1:])) <= TOLERANCE
    assert relative_error(vae.decode(both)[:1], vae.decode(both[:1])) <= TOLERANCE


def test_two_encoder_streams_interleaved_equal_each_alone(vae):
    inactive, reactive = random_video(13, seed=7), random_video(13, seed=8)
    spans = ((0, 5), (5, 9), (9, 13))

    def alone(video):
        cache = vae.new_encoder_cache()
        return torch.cat([vae.encode(video[:, :, a:b], cache) for a, b in spans], dim=2)

    caches, pieces = [vae.new_encoder_cache(), vae.new_encoder_cache()], [[], []]
    for start, stop in spans:  # VACE's inactive and reactive streams, chunk by chunk, taking turns
        for i, video in enumerate((inactive, reactive)):
            pieces[i].append(vae.encode(video[:, :, start:stop], caches[i]))
    for i, video in enumerate((inactive, reactive)):
        assert torch.equal(torch.cat(pieces[i], dim=2), alone(video))


def test_cache_copy_is_independent(vae, clip):
    _, latents, _ = clip
    cache = vae.new_decoder_cache()
    vae.decode(latents[:, :, :2], cache)
    twin = cache.copy()
    snapshot = [s.clone() for s in twin.slots]
    original = vae.decode(latents[:, :, 2:], cache)
    assert all(torch.equal(a, b) for a, b in zip(twin.slots, snapshot))  # untouched by the original's progress
    assert torch.equal(vae.decode(latents[:, :, 2:], twin), original)
    cache.reset()
    assert cache.first_chunk and all(s is None for s in cache.slots)


@pytest.mark.parametrize("direction", ["encode", "decode"])
def test_a_failed_call_leaves_the_cache_unchanged(vae, clip, direction):
    video, latents, _ = clip
    run = vae.encode if direction == "encode" else vae.decode
    data = video if direction == "encode" else latents
    first, rest = (data[:, :, :5], data[:, :, 5:9]) if direction == "encode" else (data[:, :, :2], data[:, :, 2:3])
    cache = vae.new_encoder_cache() if direction == "encode" else vae.new_decoder_cache()
    run(first, cache)
    expected = run(rest, cache.copy())
    before = list(cache.slots)
    head = (vae.encoder if direction == "encode" else vae.decoder).head[2]

    def fail(*_):
        raise RuntimeError("simulated out-of-memory in the last layer")

    handle = head.register_forward_pre_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            run(rest, cache)
    finally:
        handle.remove()
    assert cache.chunks == 1 and all(a is b for a, b in zip(cache.slots, before))
    assert torch.equal(run(rest, cache), expected)


def test_bad_video_gets_clear_errors(vae):
    cache = vae.new_encoder_cache()
    with pytest.raises(ValueError, match=r"1 \+ 4k frames"):
        vae.encode(random_video(8), cache)
    with pytest.raises(ValueError, match="RGB"):
        vae.encode(torch.zeros(1, 4, 5, 32, 32), cache)
    with pytest.raises(ValueError, match="multiples of 16"):
        vae.encode(torch.zeros(1, 3, 5, 40, 32), cache)
    with pytest.raises(TypeError, match="floating point"):
        vae.encode(torch.zeros(1, 3, 5, 32, 32, dtype=torch.uint8), cache)
    assert cache.first_chunk  # nothing was committed
    vae.encode(random_video(5), cache)
    with pytest.raises(ValueError, match="multiple of 4"):
        vae.encode(random_video(5), cache)
    with pytest.raises(ValueError, match="started with batch 1, 32x48"):
        vae.encode(random_video(4, height=48), cache)
    with pytest.raises(ValueError, match="encoder cache"):
        vae.decode(torch.zeros(1, 16, 1, 4, 6), cache)


def test_bad_latents_get_clear_errors(vae):
    with pytest.raises(ValueError, match="16, frames"):
        vae.decode(torch.zeros(1, 4, 2, 4, 4))
    with pytest.raises(ValueError, match="must be even"):
        vae.decode(torch.zeros(1, 16, 2, 5, 4))


def test_mid_stream_decoder_gives_four_frames_per_latent(vae, clip):
    _, latents, _ = clip
    assert vae.decode(latents[:, :, 1:3], vae.new_decoder_cache(mid_stream=True)).shape[2] == 8


def test_bf16_runs_close_to_fp32(weights, vae, clip):
    video, latents, _ = clip
    half = load_wan_vae(weights["pth"], dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert relative_error(half.encode(video).float(), vae.encode(video)) < 0.05
    assert relative_error(half.decode(latents).float(), vae.decode(latents)) < 0.05


def test_loader_names_the_file_and_what_it_looks_like(weights, tmp_path):
    tiny = save_weights(tiny_vae_state_dict(), tmp_path / "taew2_1.pth")
    with pytest.raises(CheckpointError, match=r"taew2_1\.pth.*tiny video VAE \(TAEHV"):
        load_wan_vae(tiny)
    image_vae = AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                              up_block_types=("UpDecoderBlock2D",), norm_num_groups=4, latent_channels=4)
    sd_file = save_weights(image_vae.state_dict(), tmp_path / "sdxl_vae.safetensors")
    with pytest.raises(CheckpointError, match=r"sdxl_vae\.safetensors.*image VAE in diffusers layout"):
        load_wan_vae(sd_file)
    diffusers_wan = convert_wan_vae_to_diffusers(dict(weights["state_dict"]))
    with pytest.raises(CheckpointError, match="diffusers layout \\(AutoencoderKLWan\\)"):
        load_wan_vae(save_weights(diffusers_wan, tmp_path / "diffusion_pytorch_model.safetensors"))
    wan22 = dict(weights["state_dict"], **{"conv2.weight": torch.zeros(48, 48, 1, 1, 1)})
    with pytest.raises(CheckpointError, match="Wan2.2 VAE"):
        load_wan_vae(save_weights(wan22, tmp_path / "Wan2.2_VAE.pth"))
    damaged = {k: v for k, v in weights["state_dict"].items() if "decoder.upsamples.4." not in k}
    with pytest.raises(CheckpointError, match=r"damaged\.pth.*missing decoder\.upsamples\.4"):
        load_wan_vae(save_weights(damaged, tmp_path / "damaged.pth"))


@pytest.fixture(scope="module")
def fast_vae(weights):
    """The same weights with channels-last convs and the fused passes (their PyTorch arithmetic on the CPU)."""
    return load_wan_vae(weights["safetensors"]).use_fast_kernels()


def test_fast_kernels_keep_the_layout_and_match_diffusers_chunk_by_chunk(fast_vae, clip):
    video, latents, decoded = clip
    conv = fast_vae.decoder.conv1
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d) and not conv.weight.is_contiguous()
    encoder, pieces = fast_vae.new_encoder_cache(), []
    for start, size in ((0, 5), (5, 8)):
        pieces.append(fast_vae.encode(video[:, :, start:start + size], encoder))
    assert all(p.is_contiguous() for p in pieces)
    assert relative_error(torch.cat(pieces, dim=2), latents) <= TOLERANCE
    decoder, frames = fast_vae.new_decoder_cache(), []
    for start, size in ((0, 1), (1, 3)):  # the first pass, then the temporal upsamplers' interleave
        frames.append(fast_vae.decode(latents[:, :, start:start + size], decoder))
    assert relative_error(torch.cat(frames, dim=2), decoded) <= TOLERANCE


def test_fast_kernels_can_be_switched_off(weights, clip):
    model = load_wan_vae(weights["safetensors"]).use_fast_kernels(fuse=False).use_fast_kernels(False)
    assert model.decoder.conv1.weight.is_contiguous() and not model.channels_last
    assert relative_error(model.decode(clip[1]), clip[2]) <= TOLERANCE


def test_layout_sensitive_steps_give_the_same_frames_channels_last():
    """On the CPU conv3d answers in the plain layout, so the channels-last branches are checked here directly."""
    from streamvace.models.vae.wan_vae_blocks import AttentionBlock, _interleave_frames
    torch.manual_seed(0)
    x = torch.randn(1, 8, 3, 6, 10)
    x_cl = x.contiguous(memory_format=torch.channels_last_3d)
    interleaved = _interleave_frames(x_cl)
    assert interleaved.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(interleaved, _interleave_frames(x))
    assert torch.equal(interleaved[:, :, 1], x[:, 4:, 0]) and torch.equal(interleaved[:, :, 2], x[:, :4, 1])
    block = AttentionBlock(8).eval()
    with torch.no_grad():
        assert torch.allclose(block(x_cl), block(x), atol=1e-6)
