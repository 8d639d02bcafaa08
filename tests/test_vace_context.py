"""The per-chunk VACE context (dual VAE encoder streams + 64-channel mask), and the stream session that
cuts control videos into chunks, against VACE's whole-clip math on the same tiny VAEs."""

import pytest
import torch

from streamvace.models.wan.stream import StreamConfig, VaceInput, WanStream
from streamvace.models.wan.stream_session import Control, StreamSession
from streamvace.models.vae.tiny_vae import TinyVAE
from streamvace.models.wan.vace_context import (VaceContextBuilder, frame_reference_control, mask_to_latent_channels,
                                             pixel_frame_start, pixel_frames_for_chunk)
from streamvace.models.vae.wan_vae import WanVAE, WanVAEConfig

from _vae_helpers import TINY_TAE_WIDTHS, random_video, tiny_vae_state_dict, wan_vae_state_dict
from wan_tiny import TEXT_DIM, tiny_model

H, W = 32, 48


def _vae(kind):
    if kind == "wan":
        vae = WanVAE(WanVAEConfig(dim=8))
        vae.load_state_dict(wan_vae_state_dict(seed=1))
    else:
        vae = TinyVAE(**TINY_TAE_WIDTHS)
        vae.load_state_dict(tiny_vae_state_dict(seed=1))
    return vae.eval()


def _mask(frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, 1, frames, H, W, generator=g) > 0.5).float()


def test_frame_counts_follow_the_vae():
    assert [pixel_frames_for_chunk(i) for i in range(3)] == [9, 12, 12]
    assert [pixel_frame_start(i) for i in range(4)] == [0, 9, 21, 33]


def _blocks_to_channels(mask):
    """[B, 1, t, H, W] -> [B, 64, t, H/8, W/8] with channel 8 * row + column of the 8x8 block (VACE's layout)."""
    b, _, t, h, w = mask.shape
    out = torch.zeros(b, 64, t, h // 8, w // 8)
    for row in range(8):
        for column in range(8):
            out[:, 8 * row + column] = mask[:, 0, :, row::8, column::8]
    return out


# VACE's vace_encode_masks: t = (T + 3) // 4 latent frames, F.interpolate(mode="nearest-exact") picks pixel frame
# floor((i + 1/2) * T / t); the group maxima follow the VAE's groups (a lone first frame, then fours).
TIME_SAMPLES = {9: ([1, 4, 7], [[0], [1, 2, 3, 4], [5, 6, 7, 8]]),
                12: ([2, 6, 10], [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]])}


@pytest.mark.parametrize("length", [9, 12])
def test_mask_time_sampling_is_vaces_nearest_exact_or_the_group_max(length):
    g = torch.Generator().manual_seed(length)
    mask = (torch.rand(2, 1, length, 16, 24, generator=g) > 0.5).float()
    picked, groups = TIME_SAMPLES[length]
    first = length == 9
    assert torch.equal(mask_to_latent_channels(mask, first), _blocks_to_channels(mask[:, :, picked]))
    group_max = torch.stack([mask[:, :, group].amax(dim=2) for group in groups], dim=2)
    assert torch.equal(mask_to_latent_channels(mask, first, time="max"), _blocks_to_channels(group_max))
    with pytest.raises(ValueError, match="mask sampling in time 'mean'"):
        mask_to_latent_channels(mask, first, time="mean")


def test_first_frame_extension_mask_follows_vace():
    mask = torch.ones(1, 1, 9, 16, 24)
    mask[:, :, 0] = 0  # keep frame 0 (the given first frame), generate the rest
    assert mask_to_latent_channels(mask, True).min() == 1  # VACE gives latent 0 the mask of frame 1
    assert mask_to_latent_channels(mask, True, time="max")[:, :, 0].min() == 0


@pytest.mark.parametrize("kind,mask_time", [("wan", "nearest"), ("tiny", "nearest"), ("tiny", "max")])
def test_chunked_context_equals_whole_clip_vace_math(kind, mask_time):
    vae = _vae(kind)
    frames, mask = random_video(21, H, W, seed=3), _mask(21)
    builder = VaceContextBuilder(vae, H, W, mask_time=mask_time)
    contexts = []
    for start, length in ((0, 9), (9, 12)):
        contexts.append(builder.context_for_chunk(frames[:, :, start:start + length], mask[:, :, start:start + length]))
        builder.commit()
    with torch.no_grad():
        inactive = vae.encode(frames * (1 - mask))
        reactive = vae.encode(frames * mask)
    picks = [1, 4, 7, 9 + 2, 9 + 6, 9 + 10]  # VACE's nearest-exact samples of each chunk
    groups = [[0], [1, 2, 3, 4], [5, 6, 7, 8]] + [list(range(9 + 4 * i, 13 + 4 * i)) for i in range(3)]
    per_latent = (mask[:, :, picks] if mask_time == "nearest"
                  else torch.stack([mask[:, :, group].amax(dim=2) for group in groups], dim=2))
    expected_mask = _blocks_to_channels(per_latent)
    expected = torch.cat([inactive, reactive, expected_mask], dim=1)
    got = torch.cat(contexts, dim=2)
    assert got.shape == (1, 96, 6, H // 8, W // 8)
    assert ((got - expected).norm() / expected.norm()) <= 1e-4


def test_uncommitted_chunk_leaves_the_builder_unchanged():
    vae = _vae("wan")
    frames = random_video(21, H, W, seed=4)
    builder = VaceContextBuilder(vae, H, W)
    builder.context_for_chunk(frames[:, :, :9])
    builder.commit()
    first_try = builder.context_for_chunk(frames[:, :, 9:21])  # the chunk "fails": no commit
    assert torch.equal(builder.context_for_chunk(frames[:, :, 9:21]), first_try)
    with pytest.raises(ValueError, match=r"must be \[1, 3, 12, 32, 48\]"):
        builder.context_for_chunk(frames[:, :, :9])
    bad = frames[:, :, 9:21].clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        builder.context_for_chunk(bad)


def test_first_and_last_frame_extension_keeps_those_frames():
    first, last = torch.rand(3, H, W) * 2 - 1, torch.rand(3, H, W) * 2 - 1
    frames, mask = frame_reference_control(12, first, last)
    assert torch.equal(frames[:, 0], first) and torch.equal(frames[:, 8], last) and torch.equal(frames[:, 11], last)
    assert mask[0, 0].max() == 0 and mask[0, 8:].max() == 0 and mask[0, 1:8].min() == 1


def _session(vae_kind="wan", seed=5):
    config = StreamConfig(height=H, width=W, seed=seed)
    session = StreamSession(tiny_model(vace=True), config, _vae(vae_kind))
    session.set_prompt(torch.randn(1, 4, TEXT_DIM, generator=torch.Generator().manual_seed(0)))
    return session


def test_session_equals_stream_with_hand_built_contexts():
    frames, mask = random_video(33, H, W, seed=6)[0], _mask(33)[0]
    session = _session()
    out = session.generate(3, [Control(frames=frames, mask=mask, strength=0.7)])

    vae = _vae("wan")
    stream = WanStream(tiny_model(vace=True), StreamConfig(height=H, width=W, seed=5))
    stream.set_prompt(torch.randn(1, 4, TEXT_DIM, generator=torch.Generator().manual_seed(0)))
    builder, chunks = VaceContextBuilder(vae, H, W), []
    for start, length in ((0, 9), (9, 12), (21, 12)):
        ctx = builder.context_for_chunk(frames[None, :, start:start + length], mask[None, :, start:start + length])
        chunks.append(stream.next_chunk([VaceInput(ctx, 0.7)]))
        builder.commit()
    assert torch.equal(out, torch.cat(chunks, dim=2))


def test_session_split_over_calls_equals_one_call_and_survives_interruption():
    frames = random_video(33, H, W, seed=7)[0]
    refs = torch.rand(2, 3, 40, 40) * 2 - 1
    controls = [Control(frames=frames, references=refs, first_frame=frames[:, 0], strength=1.0)]
    one_call = _session().generate(3, controls)

    split = _session()
    parts = [split.generate(1, controls)]

    def interrupt(step, total):
        if step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        split.generate(1, controls, on_step=interrupt)
    parts += [split.generate(1, controls), split.generate(1, controls)]
    assert split.chunks_done == 3
    # last_frame is not used, so calls split differently must give the same video
    assert torch.equal(torch.cat(parts, dim=2), one_call)


def test_live_timing_restarts_the_control_every_call():
    clip = random_video(12, H, W, seed=8)[0]
    live = _session()
    live.generate(1, [Control(frames=clip[:, :9], timing="call")])
    second = live.generate(1, [Control(frames=clip, timing="call")])
    absolute = _session()
    absolute.generate(1, [Control(frames=clip[:, :9])])
    expected = absolute.generate(1, [Control(frames=torch.cat([clip[:, :9], clip], dim=1))])
    assert torch.equal(second, expected)


@pytest.mark.parametrize("kind", ["wan", "tiny"])
def test_control_joining_mid_stream_starts_its_encoder_streams_aligned(kind):
    vae = _vae(kind)
    frames = random_video(12, H, W, seed=9)
    builder = VaceContextBuilder(vae, H, W, start_chunk=1)
    context = builder.context_for_chunk(frames)
    def lead_and_drop(video):  # lead with a copy of frame 0, drop its latent: 3 latents over the chunk's 3 groups
        with torch.no_grad():
            return vae.encode(torch.cat([video[:, :, :1], video], dim=2))[:, :, 1:]

    reactive, inactive = lead_and_drop(frames), lead_and_drop(torch.zeros_like(frames))  # mask: all ones
    assert ((context[:, 16:32] - reactive).norm() / reactive.norm()) <= 1e-5
    assert ((context[:, :16] - inactive).norm() / inactive.norm()) <= 1e-5


def test_control_joining_mid_stream_and_bad_controls():
    session = _session("tiny")
    session.generate(1)
    out = session.generate(1, [Control(frames=random_video(40, H, W, seed=9)[0])])
    assert out.shape == (1, 16, 3, H // 8, W // 8) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="empty"):
        Control(frames=torch.zeros(3, 0, H, W))
    with pytest.raises(ValueError, match="timing"):
        Control(timing="sometimes")
    with pytest.raises(ValueError, match="needs a control video"):
        Control(strength=0.5)
    no_vae = StreamSession(tiny_model(vace=True), StreamConfig(height=H, width=W))
    no_vae.set_prompt(torch.randn(1, 4, TEXT_DIM))
    with pytest.raises(ValueError, match="need a VAE"):
        no_vae.generate(1, [Control(frames=torch.zeros(3, 9, H, W))])
    t2v = StreamSession(tiny_model(), StreamConfig(height=H, width=W), _vae("tiny"))
    t2v.set_prompt(torch.randn(1, 4, TEXT_DIM))
    with pytest.raises(ValueError, match="no VACE blocks"):  # refused before any VAE work
        t2v.generate(1, [Control(frames=torch.zeros(3, 9, H, W))])


def _recorded_contexts(session):
    """Record the VACE contexts each chunk of the session gets."""
    seen, original = [], session.stream.next_chunk

    def next_chunk(vace=(), on_step=None):
        seen.append([item.context.clone() for item in vace])
        return original(vace, on_step)

    session.stream.next_chunk = next_chunk
    return seen


def _joined_context(chunk, frames):
    """What a control joining the stream at `chunk` gets: a fresh builder on the join-mid-stream path."""
    start = pixel_frame_start(chunk)
    return VaceContextBuilder(_vae("tiny"), H, W, start_chunk=chunk).context_for_chunk(frames[None, :, start:start + 12])


def test_controls_are_keyed_by_identity_not_chain_position():
    a, b = random_video(45, H, W, seed=10)[0], random_video(45, H, W, seed=11)[0]
    session = _session("tiny")
    seen = _recorded_contexts(session)
    session.generate(2, [Control(frames=a)])
    session.generate(1, [Control(frames=b)])  # control 0 swapped for another: b joins, it does not continue a
    assert torch.equal(seen[2][0], _joined_context(2, b))
    session.generate(1, [Control(frames=b.clone(), strength=0.5), Control(frames=a)])  # same b (new objects)
    continued = VaceContextBuilder(_vae("tiny"), H, W, start_chunk=2)
    continued.context_for_chunk(b[None, :, 21:33])
    continued.commit()
    assert torch.equal(seen[3][0], continued.context_for_chunk(b[None, :, 33:45]))
    assert torch.equal(seen[3][1], _joined_context(3, a))  # a left out of a run: joins afresh, no stale count


def test_a_control_left_out_of_a_run_joins_again_afresh():
    a = random_video(9, H, W, seed=12)[0]  # holds its last frame after chunk 0: every later window looks alike
    session = _session("tiny")
    seen = _recorded_contexts(session)
    session.generate(2, [Control(frames=a)])
    session.generate(1)
    session.generate(1, [Control(frames=a)])
    held = a[:, -1:].expand(-1, 45, -1, -1)
    assert torch.equal(seen[3][0], _joined_context(3, held))
