"""The long-horizon policies on the fast chunk loop: the static-buffer forwards that CUDA graphs capture and
replay (run eagerly on the CPU, as models/wan/fast_path.ChunkGraphs does without capture) equal the eager
loop over several window rolls and compressions, and a steady chunk never syncs with the host."""

import pytest
import torch

from streamvace.models.wan.fast_path import ChunkGraphs, compile_blocks, uncompile_blocks
from streamvace.models.wan.kv_cache import cache_policy
from streamvace.models.wan.stream import StreamConfig, VaceInput, WanStream

from host_sync import HostSyncError, no_host_sync
from test_long_horizon import DEEP, INFINITY
from wan_tiny import DEVICE, TEXT_DIM, interrupt_chunk, tiny_model

HEIGHT, WIDTH = 32, 48
N = 3


def _stream(model, policy, static, seed=5):
    stream = WanStream(model, StreamConfig(height=HEIGHT, width=WIDTH, policy=policy, seed=seed, steps=(1000, 750, 500)))
    if static:  # the graphs' static buffers: captured and replayed on a GPU, run as they are on the CPU
        stream.cuda_graphs, stream._graphs = True, ChunkGraphs(stream, capture=DEVICE.type == "cuda")
        stream._capture_graphs = DEVICE.type == "cuda"
    return stream


def _run(model, policy, chunks, static, vace=False, switch_at=None):
    stream = _stream(model, policy, static)
    g = torch.Generator().manual_seed(0)
    texts = [torch.randn(1, 7, TEXT_DIM, generator=g).to(DEVICE) for _ in range(2)]
    contexts = torch.randn(1, 96, N * chunks, HEIGHT // 8, WIDTH // 8, generator=g).to(DEVICE)
    stream.set_prompt(texts[0])
    out = []
    for c in range(chunks):
        if c == switch_at:
            stream.set_prompt(texts[1])
        controls = [VaceInput(contexts[:, :, N * c:N * c + N], 0.6)] if vace else ()
        out.append(stream.next_chunk(controls))
    return out, stream


CASES = {  # (policy, chunks, VACE, prompt switch at): each runs past several rolls of its window
    "infinity": (cache_policy("infinity", N), 8, False, None),  # steady from chunk 3, ring phases 3
    "infinity-sink1-vace-switch": (cache_policy("infinity", N, **INFINITY["sink1-attend6"]), 8, True, 5),
    "deep_forcing-small": (cache_policy("deep_forcing", N, **DEEP["small"]), 9, False, None),  # compresses 3, 5, 7
    "deep_forcing-small-vace": (cache_policy("deep_forcing", N, **DEEP["small"]), 7, True, 4),
}


@pytest.mark.parametrize("name", CASES)
def test_replayed_forwards_equal_the_eager_loop(name):
    policy, chunks, vace, switch_at = CASES[name]
    model = tiny_model(vace=vace)
    eager, _ = _run(model, policy, chunks, static=False, vace=vace, switch_at=switch_at)
    static, stream = _run(model, policy, chunks, static=True, vace=vace, switch_at=switch_at)
    variants = {key[-1] for key in stream._graphs._graphs}
    assert variants, "the steady chunks must have gone through the static buffers"
    if policy.__class__.__name__ == "DeepForcingPolicy":  # the compressing first forward is a graph of its own
        # (compresses now, attends to the new top-C, ...): each count of kept slots is a variant too
        assert {(True, True), (False, True), (False, False)} <= {v[:2] for v in variants}, variants
    for c, (a, b) in enumerate(zip(static, eager)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, c=c: f"chunk {c}: {m}")


@pytest.mark.parametrize("policy", [cache_policy("longlive", N), cache_policy("infinity", N, **INFINITY["sink1-attend6"]),
                                    cache_policy("deep_forcing", N, **DEEP["small"])], ids=["longlive", "infinity",
                                                                                              "deep_forcing"])
def test_steady_chunks_never_sync_with_the_host(policy):
    """After one cycle of the steady state (every ring phase / compression layout met once), whole chunks run
    under no_host_sync(host_data=False), allocate no new per-chunk tensors and keep every buffer in place."""
    model = tiny_model()
    stream = _stream(model, policy, static=True)
    stream.set_prompt(torch.randn(1, 7, TEXT_DIM, device=DEVICE))
    for _ in range(12):  # sink1-attend6: ring 5 (5 phases); small deep_forcing: ring 12, compresses every 2
        stream.next_chunk()
    cache = stream.cache
    memo = {name: len(getattr(cache, name)) for name in ("_write_indices", "_rotaries", "_plans") if hasattr(cache, name)}
    buffers = {name: t.data_ptr() for name, t in vars(cache).items() if isinstance(t, torch.Tensor)}
    graphs = set(stream._graphs._graphs)
    with no_host_sync(host_data=False):
        for _ in range(12):
            assert cache.is_steady(cache.slots(cache.frames, N))
            stream.next_chunk()
    assert memo == {name: len(getattr(cache, name)) for name in memo}, "per-chunk tensors were built again"
    assert buffers == {name: t.data_ptr() for name, t in vars(cache).items() if isinstance(t, torch.Tensor)}
    assert set(stream._graphs._graphs) == graphs, "a steady chunk needed a graph variant never met before"


def test_no_host_sync_helper_catches_every_kind_of_sync():
    x = torch.arange(6.0)
    for sync in (lambda: x[1].item(), lambda: bool(x[2] > 1), lambda: int(x[3]), lambda: x.tolist(),
                 lambda: x.nonzero(), lambda: x[x > 2], lambda: 1 if (x > 4).any() else 0, lambda: x.cpu()):
        for inference in (False, True):  # the chunk loop runs under inference mode, where .item() dispatches apart
            with pytest.raises(HostSyncError), no_host_sync(), torch.inference_mode(inference):
                sync()
    with pytest.raises(HostSyncError), no_host_sync(host_data=False):
        torch.tensor([1, 2])
    with no_host_sync():  # device-side work is fine, top-k included
        torch.topk(x * 2, 3).indices.add_(1)
        torch.tensor([1, 2])
    assert x.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # the patched methods are restored


def test_compiled_regions_do_not_recompile_with_relative_rope():
    """The query-only rotation of the long-horizon caches compiles once, like the absolute one."""
    torch._dynamo.reset()
    policy = cache_policy("infinity", N, **INFINITY["sink1-attend6"])
    model = tiny_model()
    eager, _ = _run(model, policy, 5, static=False)
    compile_blocks(model, backend="eager")  # Dynamo's guards and graph breaks, without code generation
    try:
        _run(model, policy, 2, static=False)  # warm-up
        before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        compiled, _ = _run(model, policy, 5, static=False)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == before, "recompiled after warm-up"
        assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])
    finally:
        uncompile_blocks(model)
    torch.testing.assert_close(torch.cat(compiled, 2), torch.cat(eager, 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["deep_forcing", "infinity"])
def test_interrupted_replayed_chunks_leave_the_stream_as_it_was(name):
    """A replayed chunk that fails on its first forward (where deep_forcing compresses, chunk 5) or after its
    cache pass changes nothing: committed top-C and query tails live apart from the chunk's scratch copies."""
    policy = cache_policy(name, N, **(DEEP["small"] if name == "deep_forcing" else INFINITY["sink1-attend6"]))
    model = tiny_model()
    expected, _ = _run(model, policy, 8, static=True)
    stream = _stream(model, policy, static=True)
    g = torch.Generator().manual_seed(0)
    stream.set_prompt(torch.randn(1, 7, TEXT_DIM, generator=g).to(DEVICE))
    got = []
    for c in range(8):
        for fail_at in (0, 3) if c in (5, 6) else ():
            interrupt_chunk(stream, fail_at)
        got.append(stream.next_chunk())
    assert stream._graphs._graphs
    for c, (a, b) in enumerate(zip(got, expected)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, c=c: f"chunk {c}: {m}")
