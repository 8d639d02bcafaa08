"""The TAEHV-compatible tiny VAE: taew2_1 key layout, chunked streaming == whole clip == TAEHV's step-by-step
semantics, and the Wan VAE's frame counts so a stream can switch decoders."""

import pytest
import torch
from _vae_helpers import (TINY_TAE_WIDTHS, random_video, relative_error, save_weights, tiny_vae_state_dict,
                          wan_vae_state_dict)

from streamvace.models.checkpoint_io import CheckpointError
from streamvace.models.vae.tiny_vae import MemBlock, TGrow, TinyVAE, TPool, load_tiny_vae
from streamvace.models.vae.stream import DecodeStream, EncodeStream
from streamvace.models.vae.wan_vae import WanVAE, WanVAEConfig, load_wan_vae

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_vae")
    state_dict = tiny_vae_state_dict(seed=2)
    return {"state_dict": state_dict,
            "pth": save_weights(state_dict, folder / "taew2_1.pth"),
            "safetensors": save_weights(state_dict, folder / "taew2_1.safetensors"),
            "wan": save_weights(wan_vae_state_dict(seed=4), folder / "wan_2.1_vae.safetensors")}


@pytest.fixture(scope="module")
def vae(files):
    return load_tiny_vae(files["pth"])


def step_by_step(blocks, frames):
    """TAEHV's sequential semantics, one time step at a time, depth first: the oracle for the parallel chunks."""
    memory, outputs = {}, []

    def push(x, index):
        while index < len(blocks):
            block = blocks[index]
            if isinstance(block, MemBlock):
                past = memory.get(index, torch.zeros_like(x))
                memory[index] = x
                x = block(x, past)
            elif isinstance(block, TPool):
                memory.setdefault(index, []).append(x)
                if len(memory[index]) < block.stride:
                    return
                x, memory[index] = block.conv(torch.cat(memory[index], 1)), []
            elif isinstance(block, TGrow):
                for piece in block.conv(x).chunk(block.stride, 1):
                    push(piece, index + 1)
                return
            else:
                x = block(x)
            index += 1
        outputs.append(x)

    with torch.no_grad():
        for frame in frames:
            push(frame, 0)
    return torch.stack(outputs, 2)


def test_full_size_layout_is_taew2_1s():
    with torch.device("meta"):
        full = TinyVAE()
    shapes = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    assert len(shapes) == 128
    assert sum(p.numel() for p in full.encoder.parameters()) == 1_470_928  # 1.47 M
    assert sum(p.numel() for p in full.decoder.parameters()) == 9_844_611  # 9.84 M
    assert shapes["encoder.0.weight"] == (64, 3, 3, 3) and shapes["encoder.17.weight"] == (16, 64, 3, 3)
    assert shapes["encoder.2.conv.weight"] == (64, 128, 1, 1) and shapes["encoder.12.conv.weight"] == (64, 64, 1, 1)
    assert shapes["decoder.1.weight"] == (256, 16, 3, 3) and shapes["decoder.3.conv.0.weight"] == (256, 512, 3, 3)
    assert shapes["decoder.7.conv.weight"] == (256, 256, 1, 1) and shapes["decoder.13.conv.weight"] == (256, 128, 1, 1)
    assert shapes["decoder.19.conv.weight"] == (128, 64, 1, 1) and shapes["decoder.22.weight"] == (3, 64, 3, 3)
    assert "decoder.8.bias" not in shapes


def test_both_file_formats_load(files, vae):
    other = load_tiny_vae(files["safetensors"])
    for (name, a), b in zip(vae.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, files["state_dict"][name]), name
    assert (vae.latent_channels, vae.spatial_factor, vae.temporal_factor) == (16, 8, 4)


def test_loader_cuts_a_larger_tgrow_weight_to_its_last_timestep(files, tmp_path):
    state_dict = dict(files["state_dict"])
    stride2 = torch.randn(2 * 16, 16, 1, 1)  # a TGrow trained with stride 2 where taew2_1 uses stride 1
    state_dict["decoder.7.conv.weight"] = stride2
    loaded = load_tiny_vae(save_weights(state_dict, tmp_path / "wide_tgrow.safetensors"))
    assert torch.equal(loaded.decoder[7].conv.weight, stride2[16:])


def test_decode_matches_taehv_step_by_step_and_streams_in_chunks(vae):
    latents = torch.randn(1, 16, 5, 4, 6, generator=torch.Generator().manual_seed(9))
    whole = vae.decode(latents)
    expected = step_by_step(vae.decoder, latents.unbind(2)).clamp(0, 1)[:, :, 3:] * 2 - 1
    assert whole.shape == (1, 3, 17, 32, 48)
    assert relative_error(whole, expected) <= TOLERANCE
    cache = vae.new_decoder_cache()
    pieces = [vae.decode(latents[:, :, a:b], cache) for a, b in ((0, 3), (3, 4), (4, 5))]
    assert [p.shape[2] for p in pieces] == [9, 4, 4]
    assert relative_error(torch.cat(pieces, 2), whole) <= TOLERANCE


def test_encode_matches_taehv_step_by_step_and_streams_in_chunks(vae):
    video = random_video(13, batch=2, seed=10)
    whole = vae.encode(video)
    padded = torch.cat([video[:, :, :1]] * 3 + [video], 2)  # frame 0 three more times: latent i = frames 4i-3..4i
    expected = step_by_step(vae.encoder, ((padded + 1) / 2).unbind(2))
    assert whole.shape == (2, 16, 4, 4, 6)
    assert relative_error(whole, expected) <= TOLERANCE
    cache = vae.new_encoder_cache()
    pieces = [vae.encode(video[:, :, a:b], cache) for a, b in ((0, 5), (5, 13))]
    assert [p.shape[2] for p in pieces] == [2, 2]
    assert relative_error(torch.cat(pieces, 2), whole) <= TOLERANCE


def test_frame_counts_match_the_wan_vae_so_decoders_can_switch(files, vae):
    wan = load_wan_vae(files["wan"])
    video = random_video(33, seed=11)
    encoder = EncodeStream()
    latents = [encoder.encode(wan, video[:, :, :9])] + [encoder.encode(wan, video[:, :, a:a + 12]) for a in (9, 21)]
    for other in (wan, vae):
        assert [z.shape[2] for z in latents] == [other.encode(video[:, :, :9]).shape[2], 3, 3]
    decoder = DecodeStream()
    frames = [decoder.decode(v, z) for v, z in zip((wan, vae, wan), latents)]
    assert [f.shape[2] for f in frames] == [9, 12, 12]
    tiny_first = DecodeStream()
    assert [tiny_first.decode(v, z).shape[2] for v, z in zip((vae, wan), latents)] == [9, 12]
    with pytest.raises(ValueError, match="cannot change mid-stream"):
        encoder.encode(vae, video[:, :, :12])


def test_streams_are_independent_copyable_and_transactional(vae):
    video_a, video_b = random_video(9, seed=12), random_video(9, seed=13)
    solo = vae.new_encoder_cache()
    vae.encode(video_a[:, :, :5], solo)
    alone = vae.encode(video_a[:, :, 5:9], solo)
    cache_a, cache_b = vae.new_encoder_cache(), vae.new_encoder_cache()
    vae.encode(video_a[:, :, :5], cache_a)
    vae.encode(video_b[:, :, :5], cache_b)
    twin = cache_a.copy()
    assert torch.equal(vae.encode(video_a[:, :, 5:9], cache_a), alone)
    assert torch.equal(vae.encode(video_a[:, :, 5:9], twin), alone)  # the copy did not move with the original
    before = list(cache_b.slots)

    def fail(*_):
        raise RuntimeError("boom")

    handle = vae.encoder[17].register_forward_pre_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            vae.encode(video_b[:, :, 5:9], cache_b)
    finally:
        handle.remove()
    assert cache_b.chunks == 1 and all(a is b for a, b in zip(cache_b.slots, before))


def test_bad_input_gets_clear_errors(vae):
    with pytest.raises(ValueError, match=r"1 \+ 4k frames"):
        vae.encode(random_video(12))
    with pytest.raises(ValueError, match="multiples of 16"):
        vae.encode(torch.zeros(1, 3, 5, 32, 24))
    with pytest.raises(ValueError, match="16, frames"):
        vae.decode(torch.zeros(1, 48, 2, 4, 4))
    with pytest.raises(ValueError, match="cache of WanVAE"):
        vae.decode(torch.zeros(1, 16, 2, 4, 4), WanVAE(WanVAEConfig(dim=8)).new_decoder_cache())


def test_loader_rejects_other_files_and_loads_decoder_only_files(files, tmp_path):
    with pytest.raises(CheckpointError, match=r"wan_2\.1_vae\.safetensors.*Wan2\.1-layout VAE"):
        load_tiny_vae(files["wan"])
    taew2_2 = TinyVAE(**TINY_TAE_WIDTHS).state_dict()
    taew2_2["decoder.1.weight"] = torch.zeros(16, 48, 3, 3)
    with pytest.raises(CheckpointError, match=r"taew2_2\.pth.*48 latent channels.*Wan2\.2-5B"):
        load_tiny_vae(save_weights(taew2_2, tmp_path / "taew2_2.pth"))
    decoder_only = {k: v for k, v in files["state_dict"].items() if k.startswith("decoder.")}
    preview = load_tiny_vae(save_weights(decoder_only, tmp_path / "taew2_1_decoder.safetensors"))
    assert preview.decode(torch.zeros(1, 16, 1, 2, 2)).shape == (1, 3, 1, 16, 16)
    with pytest.raises(ValueError, match="only decode"):
        preview.encode(random_video(5))
