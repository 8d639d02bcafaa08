"""Stream state sizes and moves (models/memory.py): what the registry budgets, parks and brings back."""

from dataclasses import dataclass

import numpy as np
import torch

from streamvace.models.memory import modules_of, move_state, state_devices, state_nbytes
from streamvace.models.vae.tiny_vae import TinyVAE
from streamvace.models.wan.stream import StreamConfig
from streamvace.models.wan.stream_session import Control, StreamSession

from _vae_helpers import TINY_TAE_WIDTHS, random_video, tiny_vae_state_dict
from wan_tiny import TEXT_DIM, tiny_model

H, W = 32, 48


@dataclass
class Holder:
    tensors: list
    pair: tuple
    array: np.ndarray
    model: torch.nn.Module
    generator: torch.Generator


def _holder():
    base = torch.zeros(10, 4)  # 160 bytes
    return Holder(tensors=[base, base[2:5], torch.ones(3, dtype=torch.float64)], pair=(torch.ones(2), {"k": base}),
                  array=np.zeros(5, dtype=np.float32), model=torch.nn.Linear(100, 100), generator=torch.Generator())


def test_bytes_count_each_storage_once_and_never_the_models():
    holder = _holder()
    # base 160 (its view and the second reference add nothing) + 24 + 8 + the array's 20; not the Linear's 40 400
    assert state_nbytes(holder) == 160 + 24 + 8 + 20
    assert state_nbytes(holder, "cpu") == 160 + 24 + 8 + 20
    assert modules_of(holder) == [holder.model] and modules_of(holder.model) == [holder.model]


def test_move_reaches_every_tensor_keeps_shared_references_and_leaves_models_alone():
    holder = _holder()
    generator = holder.generator
    moved = move_state(holder, "meta")
    assert moved == 160 + 48 + 24 + 8  # the view moves as a separate copy of its 3 rows (48 bytes)
    assert state_devices(holder) == {torch.device("meta")} and state_nbytes(holder, "cpu") == 20  # the array stays
    assert holder.tensors[0] is holder.pair[1]["k"]  # one tensor referenced twice is still one tensor
    assert isinstance(holder.pair, tuple) and holder.pair[0].device.type == "meta"
    assert holder.model.weight.device.type == "cpu" and holder.generator is generator


def _vae():
    vae = TinyVAE(**TINY_TAE_WIDTHS)
    vae.load_state_dict(tiny_vae_state_dict(seed=1))
    return vae.eval()


def _session():
    session = StreamSession(tiny_model(vace=True), StreamConfig(height=H, width=W, seed=3), _vae())
    session.set_prompt(torch.randn(1, 4, TEXT_DIM, generator=torch.Generator().manual_seed(0)))
    return session


def _controls():
    frames = random_video(33, H, W, seed=4)[0]
    references = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(2)) * 2 - 1
    return [Control(frames=frames, references=references, strength=0.8)]


def test_a_sessions_state_is_its_caches_not_its_models():
    session = _session()
    session.generate(1, _controls())
    stream = session.stream
    assert state_nbytes(session) >= stream.cache.nbytes + stream.history.nbytes + stream._noise.nbytes
    move_state(session, "meta")  # every tensor the stream holds leaves the CPU: KV, text K/V, VAE and VACE caches
    assert state_nbytes(session, "cpu") == 0 and state_devices(session) == {torch.device("meta")}
    assert all(p.device.type == "cpu" for p in list(stream.model.parameters()) + list(session.vae.parameters()))


def _round_trip_weights(module: torch.nn.Module) -> None:
    """What ComfyUI's offload and reload do to a model: every weight and buffer leaves and comes back as new storage."""
    saved = []
    module._apply(lambda t: saved.append(t.clone()) or t.to("meta"))
    restored = iter(saved)
    module._apply(lambda t: next(restored))


def test_stream_continues_bit_exactly_after_its_models_and_its_state_went_away_and_came_back():
    controls = _controls()
    expected = _session().generate(2, controls)

    session = _session()
    first = session.generate(1, controls)
    _round_trip_weights(session.stream.model)  # ComfyUI offloaded the models for another workflow, then reloaded
    _round_trip_weights(session.vae)
    move_state(session, "cpu", copy=True)  # the registry parked the stream on the CPU, then brought it back
    rest = session.generate(1, controls)
    assert torch.equal(torch.cat([first, rest], dim=2), expected)


def test_streams_report_their_bytes():
    session = _session()
    assert session.nbytes == session.stream.nbytes + session._prompt.nbytes  # + its copy of the prompt
    assert session.stream.nbytes > session.stream.cache.nbytes > 0
    session.generate(1, _controls())
    assert session.nbytes > session.stream.nbytes  # + the VACE encoder caches and the reference hints


def _fast_stream_run(move_at=None, chunks=7, switch_at=6):
    """The graphs' static-buffer chunk loop (run eagerly on the CPU); at `move_at` the stream is parked and
    brought back and its model offloaded and reloaded, then a prompt switch re-caches through the eager blocks."""
    from streamvace.models.wan.fast_path import ChunkGraphs
    from streamvace.models.wan.stream import WanStream

    stream = WanStream(tiny_model(), StreamConfig(height=H, width=W, seed=4))
    stream.cuda_graphs, stream._graphs = True, ChunkGraphs(stream, capture=False)
    stream._capture_graphs = False
    g = torch.Generator().manual_seed(0)
    texts = [torch.randn(1, 5, TEXT_DIM, generator=g) for _ in range(2)]
    stream.set_prompt(texts[0])
    out = []
    for chunk in range(chunks):
        if chunk == move_at:
            move_state(stream, "cpu", copy=True)
            _round_trip_weights(stream.model)
        if chunk == switch_at:
            stream.set_prompt(texts[1])
        out.append(stream.next_chunk())
    return torch.cat(out, dim=2), stream


def test_the_fast_chunk_loop_continues_exactly_after_the_stream_and_its_model_moved():
    expected, _ = _fast_stream_run()
    moved, stream = _fast_stream_run(move_at=5)
    assert stream._graphs is not None and stream._graphs.weights == stream.weight_addresses()
    assert torch.equal(moved, expected)
