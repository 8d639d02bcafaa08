"""The streaming invariant: chunk-by-chunk generation over the KV cache equals generation with full-sequence
forwards under the equivalent block-causal mask (same sink / window), for T2V, VACE and every cache policy."""

import pytest
import torch

from streamvace.models.wan.kv_cache import CacheFullError, CachePolicy, KVCache, cache_policy
from streamvace.models.wan.sampler import chunk_seed, sigma_schedule
from streamvace.models.wan.stream import StreamConfig, VaceInput, WanStream
from streamvace.models.wan.vace_reference import VaceReference

from wan_tiny import DEVICE, TEXT_DIM, captured_kv, reference_generation, reference_switch_generation, tiny_model

HEIGHT, WIDTH = 32, 48  # latent 4 x 6, 2 x 3 = 6 tokens per frame
CHUNKS = 5


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def stream_noises(config, shape, chunks):
    noises = []
    for c in range(chunks):
        g = torch.Generator(DEVICE).manual_seed(chunk_seed(config.seed, c))  # the stream draws on its device
        noises.append([torch.randn(shape, generator=g, device=DEVICE) for _ in config.steps])
    return noises


POLICIES = {
    "full": CachePolicy(0, None),
    "longlive": cache_policy("longlive"),
    "motionstream": cache_policy("motionstream"),
    "sink1-window4": CachePolicy(1, 4),  # sink and window not aligned to chunks
    "no-sink-window3": CachePolicy(0, 3),
}


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("with_vace", [False, True], ids=["t2v", "vace"])
def test_stream_equals_masked_full_sequence(name, with_vace):
    policy = POLICIES[name]
    model = tiny_model(vace=with_vace)
    config = StreamConfig(height=HEIGHT, width=WIDTH, policy=policy, seed=7, max_frames=CHUNKS * 3)
    stream = WanStream(model, config)
    text = torch.randn(1, 9, TEXT_DIM)
    stream.set_prompt(text)
    contexts, scales = None, None
    if with_vace:
        contexts = [torch.randn(1, 96, CHUNKS * 3, HEIGHT // 8, WIDTH // 8) for _ in range(2)]
        scales = [0.8, 0.5]
    chunks = []
    for c in range(CHUNKS):
        vace = [VaceInput(ctx[:, :, 3 * c:3 * c + 3], s) for ctx, s in zip(contexts, scales)] if with_vace else ()
        chunks.append(stream.next_chunk(vace))
    with torch.no_grad():
        expected = reference_generation(model, text, stream.sigmas, stream_noises(config, stream.latent_shape, CHUNKS),
                                        policy, 3, contexts, scales)
    for c, (got, want) in enumerate(zip(chunks, expected)):
        assert rel_err(got, want) <= 1e-4, f"chunk {c}: relative error {rel_err(got, want):.2e}"


def test_hints_in_cache_pass_equal_masked_full_sequence():
    model = tiny_model(vace=True)
    config = StreamConfig(height=HEIGHT, width=WIDTH, policy=cache_policy("longlive"), seed=3, vace_in_cache_pass=True)
    stream = WanStream(model, config)
    text = torch.randn(1, 5, TEXT_DIM)
    stream.set_prompt(text)
    ctx = torch.randn(1, 96, 12, HEIGHT // 8, WIDTH // 8)
    chunks = [stream.next_chunk([VaceInput(ctx[:, :, 3 * c:3 * c + 3], 1.0)]) for c in range(4)]
    with torch.no_grad():
        expected = reference_generation(model, text, stream.sigmas, stream_noises(config, stream.latent_shape, 4),
                                        config.policy, 3, [ctx], [1.0], hints_in_cache_pass=True)
    for got, want in zip(chunks, expected):
        assert rel_err(got, want) <= 1e-4


def test_cache_cost_is_constant_once_the_window_is_full():
    policy = cache_policy("longlive")
    cache = KVCache(policy, chunk_frames=3, tokens_per_frame=10, num_layers=1, batch=1, num_heads=1, head_dim=8,
                    dtype=torch.float32)
    attended = []
    for _ in range(50):
        slots = cache.slots(cache.frames, 3)
        attended.append(slots.attend_tokens)
        cache.commit(slots)
    assert attended[:4] == [30, 60, 90, 120] and set(attended[3:]) == {120}  # 3 sink + 6 window + 3 chunk frames
    assert cache.keys.shape[2] == 120  # allocated once, never grows


def test_full_history_cache_refuses_to_overflow():
    cache = KVCache(CachePolicy(0, None), chunk_frames=3, tokens_per_frame=4, num_layers=1, batch=1, num_heads=1,
                    head_dim=8, max_frames=6, dtype=torch.float32)
    for _ in range(2):
        cache.commit(cache.slots(cache.frames, 3))
    with pytest.raises(CacheFullError, match="sink \\+ window"):
        cache.slots(cache.frames, 3)


def test_interrupted_chunk_leaves_the_stream_unchanged():
    model = tiny_model()
    config = StreamConfig(height=HEIGHT, width=WIDTH, seed=11)
    text = torch.randn(1, 4, TEXT_DIM)

    def run(interrupt_at_chunk):
        stream = WanStream(model, config)
        stream.set_prompt(text)
        out = []
        for c in range(5):
            if c == interrupt_at_chunk:
                def boom(step, total):
                    if step == 2:
                        raise KeyboardInterrupt
                with pytest.raises(KeyboardInterrupt):
                    stream.next_chunk(on_step=boom)
                assert stream.frames_done == 3 * c and stream.chunks_done == c
            out.append(stream.next_chunk())
        return out

    for a, b in zip(run(None), run(3)):
        assert torch.equal(a, b)


def test_reference_images_change_the_chunk_and_are_computed_once(monkeypatch):
    model = tiny_model(vace=True)
    stream = WanStream(model, StreamConfig(height=HEIGHT, width=WIDTH, seed=1))
    stream.set_prompt(torch.randn(1, 4, TEXT_DIM))
    reference = VaceReference(stream, torch.randn(1, 16, 2, HEIGHT // 8, WIDTH // 8))
    encodes = []
    original = VaceReference._encode
    monkeypatch.setattr(VaceReference, "_encode", lambda self, s: (encodes.append(1), original(self, s)))
    ctx = torch.randn(1, 96, 3, HEIGHT // 8, WIDTH // 8)
    with_ref = stream.next_chunk([VaceInput(ctx, 1.0, reference)])
    keys_after_first = reference.cache.keys[:, :, :12].clone()
    stream.reset()
    plain = stream.next_chunk([VaceInput(ctx, 1.0)])
    assert rel_err(with_ref, plain) > 1e-3
    stream.reset()
    assert torch.equal(stream.next_chunk([VaceInput(ctx, 1.0, reference)]), with_ref)
    assert torch.equal(reference.cache.keys[:, :, :12], keys_after_first)
    assert len(encodes) == 1  # 2 chunks x 4 steps, one encode; a new prompt encodes again
    stream.set_prompt(torch.randn(1, 4, TEXT_DIM))
    stream.next_chunk([VaceInput(ctx, 1.0, reference)])
    assert len(encodes) == 2


def test_bad_vace_input_is_refused_before_anything_changes():
    model = tiny_model(vace=True)
    stream = WanStream(model, StreamConfig(height=HEIGHT, width=WIDTH))
    stream.set_prompt(torch.randn(1, 4, TEXT_DIM))
    with pytest.raises(ValueError, match="VACE context must be"):
        stream.next_chunk([VaceInput(torch.zeros(1, 96, 2, 4, 6))])
    assert stream.frames_done == 0
    with pytest.raises(ValueError, match="no VACE blocks"):
        t2v = WanStream(tiny_model(), StreamConfig(height=HEIGHT, width=WIDTH))
        t2v.set_prompt(torch.randn(1, 4, TEXT_DIM))
        t2v.next_chunk([VaceInput(torch.zeros(1, 96, 3, 4, 6))])


def test_stream_rejects_sizes_that_do_not_fit():
    with pytest.raises(ValueError, match="multiples of 16"):
        WanStream(tiny_model(), StreamConfig(height=40, width=48))
    stream = WanStream(tiny_model(), StreamConfig(height=HEIGHT, width=WIDTH))
    with pytest.raises(RuntimeError, match="set a prompt"):
        stream.next_chunk()


def test_bfloat16_stream_runs_and_tracks_float32():
    model32 = tiny_model(vace=True)
    model16 = tiny_model(vace=True, dtype=torch.bfloat16)
    text = torch.randn(1, 4, TEXT_DIM)
    ctx = torch.randn(1, 96, 3, HEIGHT // 8, WIDTH // 8)
    outs = []
    for model in (model32, model16):
        stream = WanStream(model, StreamConfig(height=HEIGHT, width=WIDTH, seed=2))
        stream.set_prompt(text)
        outs.append([stream.next_chunk([VaceInput(ctx, 1.0)]) for _ in range(3)])
    for a, b in zip(*outs):
        assert b.dtype == torch.float32 and torch.isfinite(b).all()
        assert rel_err(b, a) < 2e-2


def test_prefill_continues_an_existing_video():
    model = tiny_model()
    config = StreamConfig(height=HEIGHT, width=WIDTH, seed=4)
    text = torch.randn(1, 4, TEXT_DIM)
    generated = WanStream(model, config)
    generated.set_prompt(text)
    chunks = [generated.next_chunk() for _ in range(5)]
    continued = WanStream(model, config)
    continued.set_prompt(text)
    for chunk in chunks[:4]:
        continued.prefill(chunk)
    assert rel_err(continued.next_chunk(), chunks[4]) <= 1e-5


SWITCHES = [  # (policy, chunk the switch comes before): LongLive's local_attn_size = sink + window + 3
    ("longlive", 2),  # s = 6 < 12: the cache is not full yet, all frames re-cached, sink rewritten
    ("longlive", 4),  # s = 12: exactly full, still LongLive's frame-0 path
    ("longlive", 5),  # s = 15: the ring has wrapped, frames 6..14 re-cached in one pass, the sink keeps old K/V
    ("longlive", 7),  # s = 21: mid-window, the re-cached frames sit in a rotated ring
    ("sink1-window4", 4),  # s = 12 > 8: sink frame 0 kept, frames 5..11 re-cached
    ("full", 3),
]


@pytest.mark.parametrize("name,switch", SWITCHES, ids=[f"{n}-s{3 * c}" for n, c in SWITCHES])
def test_prompt_switch_equals_longlive_recache(name, switch):
    policy, chunks = POLICIES[name], switch + 2
    model = tiny_model()
    config = StreamConfig(height=HEIGHT, width=WIDTH, seed=5, policy=policy, max_frames=chunks * 3)
    old, new = torch.randn(1, 4, TEXT_DIM), torch.randn(1, 6, TEXT_DIM)
    stream = WanStream(model, config)
    stream.set_prompt(old)
    got = [stream.next_chunk() for _ in range(switch)]
    stream.set_prompt(new)
    got += [stream.next_chunk() for _ in range(2)]
    with torch.no_grad():
        want = reference_switch_generation(model, old, new, stream.sigmas,
                                           stream_noises(config, stream.latent_shape, chunks), policy, 3, switch)
    for c, (a, b) in enumerate(zip(got, want)):
        assert rel_err(a, b) <= 1e-4, f"chunk {c}: relative error {rel_err(a, b):.2e}"

    chunkwise = WanStream(model, StreamConfig(**{**config.__dict__, "recache": "chunkwise"}))
    chunkwise.set_prompt(old)
    for _ in range(switch):
        chunkwise.next_chunk()
    chunkwise.set_prompt(new)
    assert rel_err(chunkwise.next_chunk(), want[switch]) > 1e-4  # the oracle tells the two procedures apart


@pytest.mark.parametrize("recache", ["longlive", "chunkwise"])
def test_prompt_switch_recache_matters(recache):
    model = tiny_model()
    config = StreamConfig(height=HEIGHT, width=WIDTH, seed=4, policy=cache_policy("full"), max_frames=15,
                          recache=recache)
    old, new = torch.randn(1, 4, TEXT_DIM), torch.randn(1, 6, TEXT_DIM)
    switched = WanStream(model, config)
    switched.set_prompt(old)
    chunks = [switched.next_chunk() for _ in range(4)]
    switched.set_prompt(new)
    after_switch = switched.next_chunk()

    no_recache = WanStream(model, config)
    no_recache.set_prompt(old)
    for chunk in chunks:
        no_recache.prefill(chunk)
    no_recache.set_prompt(new, recache=False)
    assert rel_err(no_recache.next_chunk(), after_switch) > 1e-3

    if recache == "chunkwise":  # every frame re-cached causally under the new prompt == a history built under it
        oracle = WanStream(model, config)
        oracle.set_prompt(new)
        for chunk in chunks:
            oracle.prefill(chunk)
        assert rel_err(oracle.next_chunk(), after_switch) <= 1e-5


def test_unknown_recache_mode_is_refused():
    with pytest.raises(ValueError, match="re-cache 'causal'.*longlive"):
        WanStream(tiny_model(), StreamConfig(height=HEIGHT, width=WIDTH, recache="causal"))


@pytest.mark.parametrize("switch", [2, 5], ids=["sink-rewritten", "ring-wrapped"])
@pytest.mark.parametrize("failure", ["chunk-before", "recache", "chunk-after"])
def test_prompt_switch_is_deterministic_after_a_failure(switch, failure):
    model = tiny_model()
    config = StreamConfig(height=HEIGHT, width=WIDTH, seed=6)
    old, new = torch.randn(1, 4, TEXT_DIM), torch.randn(1, 5, TEXT_DIM)

    def boom(step, total):
        raise KeyboardInterrupt

    def run(fail):
        stream = WanStream(model, config)
        stream.set_prompt(old)
        for _ in range(switch):
            stream.next_chunk()
        if fail == "chunk-before":  # the chunk writes its noisy K/V over the oldest ring chunk, then dies
            with pytest.raises(KeyboardInterrupt):
                stream.next_chunk(on_step=boom)
        stream.set_prompt(new)
        if fail == "recache":  # dies inside the re-cache, after the first blocks rewrote their K/V (sink too)
            handle = model.blocks[2].register_forward_pre_hook(lambda *_: boom(0, 0))
            with pytest.raises(KeyboardInterrupt):
                stream.next_chunk()
            handle.remove()
        if fail == "chunk-after":  # the re-cache ran, the chunk after it died: the re-cache runs again
            with pytest.raises(KeyboardInterrupt):
                stream.next_chunk(on_step=boom)
        return [stream.next_chunk() for _ in range(2)]

    for a, b in zip(run(failure), run(None)):
        assert torch.equal(a, b)


def test_default_steps_are_warped_by_shift_5():
    warped = [1.0, 0.9375, 5 / 6, 0.625]  # shift*s / (1 + (shift-1)*s) for s = 1, .75, .5, .25 (LongLive)
    assert sigma_schedule() == pytest.approx(warped, abs=1e-12)
    assert sigma_schedule(warp=False) == pytest.approx([1.0, 0.75, 0.5, 0.25], abs=1e-12)
    assert WanStream(tiny_model(), StreamConfig(height=HEIGHT, width=WIDTH)).sigmas == pytest.approx(warped, abs=1e-12)


def test_cache_pass_writes_the_keys_of_a_t0_forward():
    model = tiny_model()
    stream = WanStream(model, StreamConfig(height=HEIGHT, width=WIDTH, seed=8))
    text = torch.randn(1, 4, TEXT_DIM)
    stream.set_prompt(text)
    first = stream.next_chunk()
    tokens = 3 * stream.tokens_per_frame
    with torch.no_grad():  # the clean chunk at t = 0, alone (chunk 0 attends only to itself)
        captured = captured_kv(model, first, text, None)
    for layer, (k, v) in enumerate(captured):
        assert rel_err(stream.cache.keys[layer, :, :tokens], k) <= 1e-5
        assert rel_err(stream.cache.values[layer, :, :tokens], v) <= 1e-5


@pytest.mark.parametrize("policy", ["longlive", "infinity", "deep_forcing"])
@pytest.mark.parametrize("replayed", [False, True], ids=["eager", "static-buffers"])
def test_the_cache_pass_stops_its_last_block_at_the_cache_write(policy, replayed, monkeypatch):
    """Nothing reads the cache pass's output, so its last block writes its K/V and runs no attention nor the
    rest of the block: one attention kernel and one block's matmuls less per chunk (the K/V test above and the
    streaming-invariant tests check that the stream is unchanged)."""
    import streamvace.models.wan.kv_cache as kv_cache
    import streamvace.models.wan.long_horizon as long_horizon

    model = tiny_model()
    stream = WanStream(model, StreamConfig(height=HEIGHT, width=WIDTH, policy=cache_policy(policy), seed=3))
    stream.cuda_graphs, stream._capture_graphs = replayed, False  # static-buffer forwards, run eagerly on the CPU
    stream.set_prompt(torch.randn(1, 4, TEXT_DIM))
    for _ in range(10):  # past the ring wrap (and deep_forcing's first compressions): steady chunks
        stream.next_chunk()
    calls = {"attention": 0, "last block outputs": 0}

    last = model.blocks[-1]

    def counted(name, fn, only_for=None):
        def wrapper(*args, **kwargs):
            calls[name] += only_for is None or args[0] is only_for
            return fn(*args, **kwargs)
        return wrapper

    for module in (kv_cache, long_horizon):
        monkeypatch.setattr(module, "attention", counted("attention", module.attention))
    outputs = type(last).attention_outputs
    monkeypatch.setattr(type(last), "attention_outputs", counted("last block outputs", outputs, only_for=last))
    stream.next_chunk()
    forwards = len(stream.sigmas) + 1
    assert calls == {"attention": forwards * len(model.blocks) - 1, "last block outputs": len(stream.sigmas)}


def _first_wrapping_chunk(policy, capacity_frames):
    """The first chunk whose frames do not all fit the cache's slots unused so far (the ring wraps)."""
    return next(c for c in range(100) if 3 * (c + 1) > capacity_frames)


@pytest.mark.parametrize("name", POLICIES)
def test_interrupt_at_the_ring_wrap_leaves_the_stream_unchanged(name):
    policy = POLICIES[name]
    model = tiny_model()
    config = StreamConfig(height=HEIGHT, width=WIDTH, seed=12, policy=policy, max_frames=12)
    text = torch.randn(1, 4, TEXT_DIM)
    probe = WanStream(model, config)
    # full history never wraps: its last chunk that fits stands in for the wrap
    wrap = _first_wrapping_chunk(policy, probe.cache.capacity_frames) if policy.window_frames is not None else 3

    def run(interrupt_step):
        stream = WanStream(model, config)
        stream.set_prompt(text)
        out = [stream.next_chunk() for _ in range(wrap)]
        if interrupt_step is not None:
            resident = stream.cache.resident_frames()
            slots = [stream.cache.frame_slot(f) * stream.tokens_per_frame for f in resident]
            index = torch.tensor([s + i for s in slots for i in range(stream.tokens_per_frame)])
            before = (stream.cache.keys[:, :, index].clone(), stream.cache.values[:, :, index].clone(),
                      stream.history.clone())

            def boom(step, total):
                if step == interrupt_step % total:
                    raise KeyboardInterrupt

            with pytest.raises(KeyboardInterrupt):
                stream.next_chunk(on_step=boom)
            assert (stream.frames_done, stream.chunks_done) == (3 * wrap, wrap)
            assert torch.equal(stream.cache.keys[:, :, index], before[0])
            assert torch.equal(stream.cache.values[:, :, index], before[1])
            assert torch.equal(stream.history, before[2])
        out += [stream.next_chunk() for _ in range(2 if policy.window_frames is not None else 1)]
        return out

    plain = run(None)
    for step in (0, -1):  # after the first denoising forward, after the cache pass (before the commit)
        assert all(torch.equal(a, b) for a, b in zip(run(step), plain)), f"interrupt at step {step}"


def test_reference_images_equal_a_masked_vace_forward_over_references_and_chunk():
    model = tiny_model(vace=True)
    config = StreamConfig(height=HEIGHT, width=WIDTH, seed=9, policy=cache_policy("longlive"))
    stream = WanStream(model, config)
    text = torch.randn(1, 4, TEXT_DIM)
    stream.set_prompt(text)
    refs = torch.randn(1, 16, 2, HEIGHT // 8, WIDTH // 8)
    reference = VaceReference(stream, refs)
    contexts = [torch.randn(1, 96, 9, HEIGHT // 8, WIDTH // 8) for _ in range(2)]
    scales = [0.9, 0.6]
    got = [stream.next_chunk([VaceInput(contexts[0][:, :, 3 * c:3 * c + 3], scales[0], reference),
                              VaceInput(contexts[1][:, :, 3 * c:3 * c + 3], scales[1])]) for c in range(3)]
    with torch.no_grad():
        want = reference_generation(model, text, stream.sigmas, stream_noises(config, stream.latent_shape, 3),
                                    config.policy, 3, contexts, scales, references=[refs, None])
    for c, (a, b) in enumerate(zip(got, want)):
        assert rel_err(a, b) <= 1e-4, f"chunk {c}: relative error {rel_err(a, b):.2e}"


def test_a_new_seed_takes_effect_from_the_next_chunk():
    model = tiny_model()
    config = StreamConfig(height=HEIGHT, width=WIDTH, seed=1, max_frames=12)
    text = torch.randn(1, 4, TEXT_DIM)
    constant = WanStream(model, config)
    constant.set_prompt(text)
    changed = WanStream(model, config)
    changed.set_prompt(text)
    first = [changed.next_chunk() for _ in range(2)]
    assert all(torch.equal(a, constant.next_chunk()) for a in first)  # same seed so far
    changed.set_seed(9)
    later = [changed.next_chunk() for _ in range(2)]
    assert changed.frames_done == 12 and rel_err(later[0], constant.next_chunk()) > 1e-3
    schedule = [1, 1, 9, 9]  # the oracle: chunk c's noise drawn from chunk_seed(schedule[c], c)
    noises = []
    for c, seed in enumerate(schedule):
        g = torch.Generator(DEVICE).manual_seed(chunk_seed(seed, c))
        noises.append([torch.randn(changed.latent_shape, generator=g, device=DEVICE) for _ in config.steps])
    with torch.no_grad():
        expected = reference_generation(model, text, changed.sigmas, noises, config.policy, 3)
    for c, (got, want) in enumerate(zip(first + later, expected)):
        assert rel_err(got, want) <= 1e-4, f"chunk {c}"
