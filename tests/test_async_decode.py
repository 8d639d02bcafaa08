"""AsyncDecoder (decode beside the next chunk's DiT): the same frames as DecodeStream in submission order, however
many chunks wait; a chunk the VAE refuses, or NaN latents found late, leave the decode stream usable; submitting
reads no value on the host (on a GPU it would wait for the DiT). The side-stream path itself needs CUDA."""

import copy

import pytest
import torch
from _vae_helpers import TINY_TAE_WIDTHS, TINY_WAN_DIM, randomize_
from host_sync import no_host_sync
from wan_tiny import tiny_model

from streamvace.models.vae.async_decode import AsyncDecoder
from streamvace.models.vae.stream import DecodeStream
from streamvace.models.vae.tiny_vae import TinyVAE
from streamvace.models.vae.wan_vae import WanVAE, WanVAEConfig
from streamvace.models.wan.stream import StreamConfig
from streamvace.models.wan.stream_session import StreamSession


@pytest.fixture(scope="module")
def vaes():
    return (randomize_(WanVAE(WanVAEConfig(dim=TINY_WAN_DIM)), 1).eval(),
            randomize_(TinyVAE(**TINY_TAE_WIDTHS), 2).eval())


def _chunks(count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 16, 3, 4, 6, generator=generator) for _ in range(count)]


def _sync(vae_for, chunks):
    stream = DecodeStream()
    return [stream.decode(vae_for(i), z) for i, z in enumerate(chunks)]


def _assert_same(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def decoding_late(monkeypatch):
    """Chunks still decoding until waited for, as on a GPU whose completion event has not fired yet."""
    settle = AsyncDecoder._settle
    monkeypatch.setattr(AsyncDecoder, "_settle", lambda self, wait: settle(self, wait) if wait else False)


@pytest.mark.parametrize("max_in_flight", [1, 2])
@pytest.mark.parametrize("late", [False, True])
def test_same_frames_in_order_with_more_chunks_waiting_than_in_flight(vaes, max_in_flight, late, monkeypatch):
    """Five chunks, with a switch from the Wan to the tiny decoder at chunk 3, all submitted before any is taken."""
    if late:
        decoding_late(monkeypatch)
    wan, tiny = vaes
    vae_for = lambda i: wan if i < 3 else tiny  # noqa: E731
    chunks = _chunks(5)
    expected = _sync(vae_for, chunks)
    decoder = AsyncDecoder(max_in_flight=max_in_flight)
    for i, z in enumerate(chunks):
        decoder.submit(vae_for(i), z)
    assert decoder.pending == 5
    got = decoder.drain()
    _assert_same(got, expected)
    assert [v.shape[2] for v in got] == [9, 12, 12, 12, 12] and decoder.pending == 0

    decoder, got = AsyncDecoder(max_in_flight=max_in_flight), []  # taken as they come, as the CLI does
    for i, z in enumerate(chunks):
        decoder.submit(vae_for(i), z)
        waiting, wait = decoder.pending, i % 2 == 0
        taken = decoder.take(wait=wait)
        if late:  # only what was waited for: what made room for the newest, else the oldest when asked to wait
            assert len(taken) == max(int(wait), waiting - max_in_flight)
        got += taken
    _assert_same(got + decoder.drain(), expected)
    assert decoder.stream.chunks == 5 and decoder.take() == []


def test_submitting_reads_no_value_on_the_host(vaes):
    """DecodeStream's NaN check syncs with the host; the decoder defers it, so a submit never waits for the DiT."""
    decoder = AsyncDecoder(max_in_flight=2)  # (making room reads the previous chunk's NaN flag, once decoded)
    chunks = _chunks(2)
    with no_host_sync():
        for z in chunks:
            decoder.submit(vaes[1], z)
    _assert_same(decoder.drain(), _sync(lambda i: vaes[1], chunks))


def test_a_refused_chunk_raises_and_changes_nothing(vaes):
    wan = vaes[0]
    chunks = _chunks(3)
    decoder = AsyncDecoder(max_in_flight=2)
    decoder.submit(wan, chunks[0])
    with pytest.raises(ValueError, match=r"\[batch, 16, frames.*got shape \(1, 4, 3, 4, 6\)"):
        decoder.submit(wan, torch.randn(1, 4, 3, 4, 6))  # e.g. SD latents
    assert decoder.pending == 1 and decoder.stream.chunks == 1
    decoder.submit(wan, chunks[1])
    decoder.submit(wan, chunks[2])
    _assert_same(decoder.drain(), _sync(lambda i: wan, chunks))


def test_nan_latents_raise_when_taken_and_the_stream_goes_back_before_them(vaes):
    """Chunk 1 holds a NaN: chunk 0 is still delivered, chunks 1 and 2 are dropped, the stream continues from 0."""
    tiny = vaes[1]
    chunks = _chunks(4)
    bad = chunks[1].clone()
    bad[0, 3, 1, 2, 2] = float("nan")
    decoder = AsyncDecoder(max_in_flight=3)
    for z in (chunks[0], bad, chunks[2]):
        decoder.submit(tiny, z)
    with pytest.raises(ValueError, match=r"chunk 1 given to the decoder holds NaN.*1 chunk\(s\) submitted after it"):
        decoder.take()
    assert decoder.pending == 1 and decoder.stream.chunks == 1
    got = decoder.take()
    for z in chunks[1:]:
        decoder.submit(tiny, z)
    _assert_same(got + decoder.drain(), _sync(lambda i: tiny, chunks))


def test_latents_handed_over_are_not_written_by_the_next_chunk():
    """The decoder reads a chunk's latents while the DiT runs the next chunk: generate must return a new tensor."""
    session = StreamSession(tiny_model(), StreamConfig(height=32, width=48))
    session.set_prompt(torch.randn(1, 8, session.stream.model.config.text_dim))
    first = session.generate(1)
    kept = first.clone()
    second = session.generate(1)
    assert torch.equal(first, kept) and first.data_ptr() != second.data_ptr()


def test_bad_bound():
    with pytest.raises(ValueError, match="max_in_flight must be >= 1"):
        AsyncDecoder(max_in_flight=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the side stream, events and pinned copies need CUDA")
def test_cuda_side_stream_waits_for_the_producer_and_never_syncs_the_host(vaes):
    """Each chunk's latents are written at the end of a long run of producer-stream work: a side stream that did not
    wait for it would decode them unwritten."""
    tiny = copy.deepcopy(vaes[1]).cuda()
    chunks = [z.cuda() for z in _chunks(4)]
    expected = _sync(lambda i: tiny, chunks)
    decoder = AsyncDecoder(max_in_flight=len(chunks))
    decoder.submit(tiny, chunks[0])  # the VAE's first chunk runs on the producer stream (its set-up may sync)
    busy = torch.randn(2048, 2048, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for z in chunks[1:]:
            for _ in range(20):
                busy = torch.tanh(busy @ busy)
            written_late = torch.empty_like(z)
            written_late.copy_(z)
            decoder.submit(tiny, written_late)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    got = decoder.drain()
    assert all(frames.is_pinned() for frames in got)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-5, atol=1e-5)
