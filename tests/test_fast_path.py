"""The fast chunk loop on the CPU: compiled block regions never recompile as the ring turns, and the
static-buffer forwards that CUDA graphs replay equal the eager loop (benchmarks/bench_engine.py checks
the captured graphs themselves on a GPU)."""

import gc
import weakref

import pytest
import torch

from streamvace.models.wan.fast_path import ChunkGraphs, compile_blocks, uncompile_blocks
from streamvace.models.wan.kv_cache import cache_policy
from streamvace.models.wan.stream import StreamConfig, VaceInput, WanStream

from wan_tiny import DEVICE, TEXT_DIM, tiny_model

HEIGHT, WIDTH = 32, 48
CHUNKS = 8  # the longlive ring (9 frames) wraps at chunk 4 and turns through all three of its phases


def _run(model, policy, chunks, static: bool, vace: bool, prompt_switch_at=None, seed=3, vary_scale=False):
    stream = WanStream(model, StreamConfig(height=HEIGHT, width=WIDTH, policy=cache_policy(policy), seed=seed))
    if static:  # the graphs' static buffers: captured and replayed on a GPU, run as they are on the CPU
        stream.cuda_graphs, stream._graphs = True, ChunkGraphs(stream, capture=DEVICE.type == "cuda")
    g = torch.Generator().manual_seed(0)
    texts = [torch.randn(1, 7, TEXT_DIM, generator=g).to(DEVICE) for _ in range(2)]
    contexts = torch.randn(1, 96, 3 * chunks, HEIGHT // 8, WIDTH // 8, generator=g).to(DEVICE)
    stream.set_prompt(texts[0])
    out = []
    for c in range(chunks):
        if c == prompt_switch_at:
            stream.set_prompt(texts[1])
        scale = 0.7 + 0.1 * c if vary_scale else 0.7  # a user moving the strength slider mid-stream
        controls = [VaceInput(contexts[:, :, 3 * c:3 * c + 3], scale)] if vace else ()
        out.append(stream.next_chunk(controls))
    return torch.cat(out, 2), stream


@pytest.mark.parametrize("policy", ["longlive", "motionstream"])
@pytest.mark.parametrize("vace", [False, True], ids=["t2v", "vace"])
def test_static_buffer_forwards_equal_the_eager_loop(policy, vace):
    model = tiny_model(vace=vace)
    eager, _ = _run(model, policy, CHUNKS, static=False, vace=vace, prompt_switch_at=6, vary_scale=True)
    static, stream = _run(model, policy, CHUNKS, static=True, vace=vace, prompt_switch_at=6, vary_scale=True)
    # one graph per kind of forward (denoising, cache pass): a new VACE strength is a fill of its static buffer
    assert len(stream._graphs._graphs) == 2, list(stream._graphs._graphs)
    torch.testing.assert_close(static, eager, rtol=1e-5, atol=1e-5)


def test_a_dropped_stream_frees_its_cache_at_once():
    # the graphs link back to their stream weakly: a cycle would hold the KV cache (and on CUDA the graph
    # pool) after the node drops the stream, until Python's cyclic collector happened to run
    model = tiny_model(vace=True)
    gc.disable()
    try:
        _, stream = _run(model, "longlive", 6, static=True, vace=True)
        assert stream._graphs._graphs, "the steady-state chunks must have gone through the static buffers"
        stream_ref, cache_ref = weakref.ref(stream), weakref.ref(stream.cache)
        del stream
        assert stream_ref() is None and cache_ref() is None
    finally:
        gc.enable()


def test_static_forwards_write_the_slots_of_each_ring_phase():
    # a graph that froze the first phase's slots would overwrite the window: the chunks after it would differ
    model = tiny_model()
    _, stream = _run(model, "longlive", 7, static=True, vace=False)
    # chunks 3..6 are steady; with 6 tokens a frame, the 3-frame sink is tokens 0-17 and the 9-frame ring
    # holds three chunk positions, starting at tokens 18, 36 and 54
    phases = set(stream.cache._write_indices)
    assert phases == {((0, 18, 18),), ((0, 36, 18),), ((0, 54, 18),)}, phases


def test_compiled_regions_do_not_recompile_as_the_ring_turns():
    torch._dynamo.reset()
    model = tiny_model(vace=True)
    eager, _ = _run(model, "longlive", 6, static=False, vace=True, vary_scale=True)
    compile_blocks(model, backend="eager")  # Dynamo's guards and graph breaks, without code generation
    try:
        _run(model, "longlive", 3, static=False, vace=True)  # warm-up: the chunk and VACE token shapes
        frames_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        # a new VACE strength every chunk: the strength reaches the compiled regions as a tensor
        compiled, _ = _run(model, "longlive", 6, static=False, vace=True, vary_scale=True)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames_before, "recompiled after warm-up"
        assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])
    finally:
        uncompile_blocks(model)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_fp8_linear_computes_the_quantised_product():
    from streamvace.models.wan.fp8 import E4M3, FP8Linear

    g = torch.Generator().manual_seed(1)
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(5, 7, 64, generator=g) * torch.linspace(0.1, 10, 7)[:, None]  # rows of different scale
    linear, x = linear.to(DEVICE), x.to(DEVICE)
    layer = FP8Linear(linear)
    # independent: per-row absmax scales, round to e4m3, multiply the dequantised numbers
    w_scale = linear.weight.abs().amax(1, keepdim=True) / 448
    w = (linear.weight / w_scale).to(E4M3).float() * w_scale
    rows = x.reshape(-1, 64)
    x_scale = rows.abs().amax(1, keepdim=True) / 448
    xq = (rows / x_scale).to(E4M3).float() * x_scale
    expected = (xq @ w.t() + linear.bias).reshape(5, 7, 32)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    exact = linear(x)
    error = ((layer(x) - exact).norm() / exact.norm()).item()
    assert 1e-3 < error < 0.06, f"e4m3 should cost a few per cent, not {error:.2e}"


def test_fp8_linear_with_gelu_input_quantises_gelu_of_its_input():
    from streamvace.models.wan.fp8 import FP8Linear

    g = torch.Generator().manual_seed(2)
    x = (torch.randn(6, 96, generator=g) * 3).to(DEVICE)
    plain = FP8Linear(torch.nn.Linear(96, 16).to(DEVICE))
    with_gelu = FP8Linear(torch.nn.Linear(96, 16).to(DEVICE))
    with_gelu.load_state_dict(plain.state_dict())
    with_gelu.gelu_input = True
    expected = plain(torch.nn.functional.gelu(x, approximate="tanh"))
    torch.testing.assert_close(with_gelu(x), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain(x), expected, atol=1e-3)


def test_fp8_blocks_stream_close_to_full_precision():
    from streamvace.models.wan.fp8 import FP8Linear, quantize_blocks_fp8

    model = tiny_model()
    full, _ = _run(model, "longlive", 3, static=False, vace=False)
    assert quantize_blocks_fp8(model) == 8 * len(model.blocks)
    assert isinstance(model.blocks[0].ffn[0], FP8Linear) and not isinstance(model.blocks[0].cross_attn.k, FP8Linear)
    # the FFN's GELU moved into the second FP8Linear (one quantisation kernel on CUDA), the key tree unchanged
    assert isinstance(model.blocks[0].ffn[1], torch.nn.Identity) and model.blocks[0].ffn[2].gelu_input
    fp8, _ = _run(model, "longlive", 3, static=False, vace=False)
    error = ((fp8 - full).norm() / full.norm()).item()
    assert 1e-4 < error < 0.1, f"relative difference {error:.2e}"


def _triton_on_cuda() -> bool:
    from streamvace.models.wan.triton_kernels import available
    return torch.cuda.is_available() and available()


@pytest.mark.skipif(not _triton_on_cuda(), reason="the fused kernels of compiled regions need CUDA and Triton")
def test_compiled_regions_fuse_norm_rope_and_gelu_to_the_same_numbers():
    """The Triton RMSNorm+RoPE kernel and the matmul-epilogue GELU against the reference steps, in and out of
    torch.compile (compiled regions take the fused paths; eager blocks keep the reference steps)."""
    from torch import nn

    from streamvace.models.wan.blocks import linear_gelu
    from streamvace.models.wan.long_horizon import QueryRotary
    from streamvace.models.wan.rope import RotaryTable, rope_angles
    from streamvace.models.wan.triton_kernels import rms_norm_rope

    torch.manual_seed(0)
    heads, width = 12, 1536
    norm = nn.RMSNorm(width, eps=1e-6).cuda().to(torch.bfloat16)
    norm.weight.data.normal_(1.0, 0.3)
    x = torch.randn(1, 3 * 6 * 8, width, device="cuda", dtype=torch.bfloat16) * 3
    table = RotaryTable.for_grid(width // heads, 7, 3, 6, 8, device="cuda")
    reference = table.apply(norm(x).unflatten(-1, (heads, -1))).float()

    def close(a, b):  # bf16 round-off apart (the reference rounds twice: after the norm, after the rotation)
        return (a.float() - b).norm() / b.norm() < 4e-3 and (a.float() - b).abs().max() <= b.abs().max() * 2 ** -6

    fused = rms_norm_rope(x, norm.weight, 1e-6, table.cos, table.sin, heads)
    assert close(fused, reference) and not torch.equal(reference, table.apply(x.float().unflatten(-1, (heads, -1))))
    compiled = torch.compile(lambda t, h: t.apply_normed(h, norm, heads), fullgraph=True)

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()

    with torch.no_grad():  # as the engine runs (inference mode)
        out, steps = compiled(table, x), table.apply_normed(x, norm, heads)
        assert torch.equal(steps.float(), reference)  # eager: the reference steps
        # compiled: the fused kernel (Inductor builds it with its own options, so last bits may differ), not the
        # reference's two roundings
        assert close(out, reference) and rel(out, fused) < rel(steps, fused) / 4, (rel(out, fused), rel(steps, fused))
        raw_keys = QueryRotary(rope_angles(width // heads, torch.arange(7, 10, device="cuda"), 6, 8))
        keys = torch.compile(lambda t, h: t.apply_normed_to_keys(h, norm, heads), fullgraph=True)(raw_keys, x)
        assert torch.equal(keys, norm(x).unflatten(-1, (heads, -1)))  # a table that leaves keys raw still does
    with_grad = compiled(table, x)  # the weight wants a gradient: the kernel has no backward, so the reference steps
    assert close(with_grad, reference)
    with_grad.float().square().sum().backward()
    assert norm.weight.grad is not None and torch.isfinite(norm.weight.grad).all()

    linear, gelu = nn.Linear(width, 4 * width).cuda().to(torch.bfloat16), nn.GELU(approximate="tanh")
    expected = gelu(linear(x).float())
    assert ((linear_gelu(linear, x).float() - expected).norm() / expected.norm()) < 4e-3
