"""Long-horizon cache policies (models/wan/long_horizon.py) against independent, naive computations of their
definitions: caches as plain lists of raw keys with absolute positions, RoPE applied the way the reference
code does (LongLive-infinity: index in the cache; Deep Forcing: absolute frames, sink re-aligned, top-C by a
full sort of the recent queries' scores), no ring buffers, no masks, no relative-position shortcut."""

import pytest
import torch

from streamvace.models.wan.attention import attention
from streamvace.models.wan.kv_cache import cache_policy, cache_policy_from_text
from streamvace.models.wan.long_horizon import DeepForcingCache, InfinityCache, InfinityPolicy, TokenRotary
from streamvace.models.wan.rope import RotaryTable, rope_angles
from streamvace.models.wan.sampler import model_timestep, predict_x0, renoise
from streamvace.models.wan.stream import StreamConfig, VaceInput, WanStream
from streamvace.models.wan.vace import combine_hints, vace_hints

from test_streaming import HEIGHT, WIDTH, rel_err, stream_noises
from wan_tiny import DEVICE, TEXT_DIM, interrupt_chunk, tiny_model


N = 3  # latent frames per chunk


class Raw:
    """A rope that rotates nothing: the naive attention below rotates q and k itself."""

    def apply(self, x):
        return x

    apply_to_keys = apply

    def apply_normed(self, x, norm, heads):
        return norm(x).unflatten(-1, (heads, -1))

    apply_normed_to_keys = apply_normed

    def plain(self):
        return self


def rotate(x, frames, grid_hw, head_dim, tokens=None):
    """x [B, L, H, D] rotated at temporal positions `frames` (one per frame, or one per token with `tokens`)."""
    frames = torch.as_tensor(frames, device=x.device)
    angles = rope_angles(head_dim, frames, *grid_hw)  # Wan's grid angles, one grid per listed frame
    if tokens is not None:  # keep, for the i-th token, the grid row of its own spatial position
        per = grid_hw[0] * grid_hw[1]
        rows = torch.arange(len(frames), device=x.device) * per + torch.as_tensor(tokens, device=x.device)
        angles = angles[rows]
    return TokenRotary(angles).apply(x)


class NaiveInfinity:
    """LongLive-infinity as the reference computes it: visible frames in cache order, RoPE index = cache index."""

    def __init__(self, policy, layers, grid_hw, head_dim):
        self.policy, self.grid_hw, self.head_dim = policy, grid_hw, head_dim
        self.frames = [dict() for _ in range(layers)]  # frame -> (raw k, v) from the clean pass

    def attends(self, start, clean_pass):
        def make(layer):
            def attend(q, k, v):
                past = self.policy.visible_past(start)
                store = self.frames[layer]
                ks = [store[f][0] for f in past] + [k]
                vs = [store[f][1] for f in past] + [v]
                places = list(range(len(past) + N))
                q_rot = rotate(q, places[len(past):], self.grid_hw, self.head_dim)
                k_rot = rotate(torch.cat(ks, 1), places, self.grid_hw, self.head_dim)
                if clean_pass:
                    per = k.shape[1] // N
                    for i in range(N):
                        store[start + i] = (k[:, i * per:(i + 1) * per], v[:, i * per:(i + 1) * per])
                return attention(q_rot, k_rot, torch.cat(vs, 1))
            return attend
        return [make(layer) for layer in range(len(self.frames))]


    def recache_attends(self, switch_frame, attended):
        """LongLive v1.0's prompt switch with infinite attention (global sink): one t = 0 forward over the last
        min(attended, s) clean frames, queries at their index 0.. in that list, keys = the cache after the
        write (index = place); past the first window the sink is protected: it keeps its old K/V and only the
        frames after it in the list are written (is_recompute), the first ones only ask queries."""
        s, m = switch_frame, min(attended, switch_frame)
        sink = self.policy.sink_frames
        protect = s > m

        def make(layer):
            def attend(q, k, v):
                store, per = self.frames[layer], k.shape[1] // m
                new = {s - m + i: (k[:, i * per:(i + 1) * per], v[:, i * per:(i + 1) * per]) for i in range(m)}
                if protect:
                    cache = [store[f] for f in range(sink)] + [new[f] for f in range(s - (m - sink), s)]
                    store.update({f: new[f] for f in range(s - (m - sink), s)})
                else:
                    cache = [new[f] for f in range(s - m, s)]
                    store.update(new)
                q_rot = rotate(q, list(range(m)), self.grid_hw, self.head_dim)
                k_rot = rotate(torch.cat([kv[0] for kv in cache], 1), list(range(len(cache))), self.grid_hw,
                               self.head_dim)
                return attention(q_rot, k_rot, torch.cat([kv[1] for kv in cache], 1))
            return attend
        return [make(layer) for layer in range(len(self.frames))]


class NaiveDeepForcing:
    """Deep Forcing as the reference computes it (batch 1): a token list with absolute frame positions, the sink
    moved to current_start - tail frames - sink frames on each compression, top-C by sorting the scores of the
    last R frames of queries (kept across forwards, as the reference's win_q)."""

    def __init__(self, policy, layers, grid_hw, head_dim, wrong_top=False):
        self.p, self.grid_hw, self.head_dim, self.wrong_top = policy, grid_hw, head_dim, wrong_top
        self.per = grid_hw[0] * grid_hw[1]
        self.layers = [dict(k=None, v=None, frame=[], tok=[], sink_start=0, win_q=None) for _ in range(layers)]

    def positions(self, c):
        sink = self.p.sink_frames
        return [c["sink_start"] + f if i < sink * self.per else f for i, f in enumerate(c["frame"])]

    def attends(self, start, first_forward):
        def make(layer):
            def attend(q, k, v):
                c, p, per = self.layers[layer], self.p, self.per
                new_frames = [start + i // per for i in range(k.shape[1])]
                new_tok = [i % per for i in range(k.shape[1])]
                q_rot = rotate(q, new_frames, self.grid_hw, self.head_dim, new_tok)
                recent_q = q_rot if c["win_q"] is None else torch.cat([c["win_q"], q_rot], 1)
                c["win_q"] = recent_q[:, -p.recent_frames * per:]
                if not first_forward:  # later steps of the chunk rewrite its tokens
                    c["k"], c["v"] = c["k"][:, :-k.shape[1]], c["v"][:, :-k.shape[1]]
                    c["frame"], c["tok"] = c["frame"][:-k.shape[1]], c["tok"][:-k.shape[1]]
                full = c["k"] is not None and c["k"].shape[1] + k.shape[1] > p.max_frames * per
                c["k"] = k if c["k"] is None else torch.cat([c["k"], k], 1)
                c["v"] = v if c["v"] is None else torch.cat([c["v"], v], 1)
                c["frame"], c["tok"] = c["frame"] + new_frames, c["tok"] + new_tok
                if first_forward and full:
                    self.compress(c, start)
                keys = rotate(c["k"], self.positions(c), self.grid_hw, self.head_dim, c["tok"])
                return attention(q_rot, keys, c["v"])
            return attend
        return [make(layer) for layer in range(len(self.layers))]

    def compress(self, c, start):
        p, per = self.p, self.per
        total, sink, recent = c["k"].shape[1], p.sink_frames * per, p.recent_frames * per
        keys = rotate(c["k"], self.positions(c), self.grid_hw, self.head_dim, c["tok"])
        phi = torch.einsum("bhd,blhd->l", c["win_q"].sum(1), keys)  # sum over recent queries and heads
        candidates = list(range(sink, total - recent))
        order = sorted(candidates, key=lambda j: -phi[j].item())
        chosen = order[:(p.budget_frames - p.sink_frames - p.recent_frames) * per]
        if self.wrong_top:  # the mutation: the lowest scores instead of the highest
            chosen = order[len(order) - len(chosen):]
        keep = list(range(sink)) + sorted(chosen) + list(range(total - recent, total))
        c["k"], c["v"] = c["k"][:, keep], c["v"][:, keep]
        c["frame"], c["tok"] = [c["frame"][j] for j in keep], [c["tok"][j] for j in keep]
        tail_frames = (len(keep) - sink) // per
        c["sink_start"] = start - tail_frames - p.sink_frames


def naive_generation(model, text, sigmas, noises, naive, contexts=None, scales=None, switch=None):
    """The stream's sampling loop over a naive cache: denoising steps, then the clean pass that caches K/V.
    switch=(chunk, text, attended): before that chunk, switch to the new prompt with the naive re-cache."""
    grid_hw = naive.grid_hw
    base_text, vace_text = model.text_kv(text.to(DEVICE))
    clean = []
    for c, chunk_noises in enumerate(noises):
        start = c * N
        if switch is not None and c == switch[0]:
            base_text, vace_text = model.text_kv(switch[1].to(DEVICE))
            m = min(switch[2], start)
            latents = torch.cat(clean, 2)[:, :, start - m:start]
            e, e0 = model.embed_time(torch.full((1,), model_timestep(0.0), device=DEVICE))
            model.run_blocks(model.patchify(latents), e0, base_text, Raw(), naive.recache_attends(start, switch[2]))
        x = x0 = chunk_noises[0]
        for step, sigma in enumerate([*sigmas, 0.0]):
            last = step == len(sigmas)
            latents = x0 if last else x
            e, e0 = model.embed_time(torch.full((1,), model_timestep(sigma), device=DEVICE))
            tokens = model.patchify(latents)
            hints = None
            if contexts and not last:
                rope = rotate_table(model.config.head_dim, start, grid_hw)
                per = [vace_hints(model.vace_blocks, model.patchify(ctx[:, :, start:start + N], model.vace_patch_embedding),
                                  tokens, e0, vace_text, rope, [attention] * len(model.vace_blocks)) for ctx in contexts]
                hints = combine_hints(per, scales)
            if isinstance(naive, NaiveInfinity):
                attends = naive.attends(start, clean_pass=last)
            else:
                attends = naive.attends(start, first_forward=step == 0)
            out = model.run_blocks(tokens, e0, base_text, Raw(), attends, hints)
            if last:
                break
            v = model.unpatchify(model.head(out, e), (N, *grid_hw))
            x0 = predict_x0(x, v, sigma)
            if step + 1 < len(sigmas):
                x = renoise(x0, chunk_noises[step + 1], sigmas[step + 1])
        clean.append(x0)
    return clean


def rotate_table(head_dim, start, grid_hw):
    return RotaryTable.for_grid(head_dim, start, N, *grid_hw, device=DEVICE)


def run_stream(policy, chunks, vace=False, seed=7, switch=None):
    """A stream of `chunks` chunks; switch=(chunk, text): set a new prompt before that chunk (re-cache)."""
    model = tiny_model(vace=vace)
    torch.manual_seed(0)
    config = StreamConfig(height=HEIGHT, width=WIDTH, policy=policy, seed=seed, steps=(1000, 750, 500))
    stream = WanStream(model, config)
    text = torch.randn(1, 9, TEXT_DIM)
    stream.set_prompt(text)
    contexts = scales = None
    if vace:
        contexts = [torch.randn(1, 96, chunks * N, HEIGHT // 8, WIDTH // 8, device=DEVICE) for _ in range(2)]
        scales = [0.8, 0.5]
    got = []
    for c in range(chunks):
        if switch is not None and c == switch[0]:
            stream.set_prompt(switch[1])
        items = [VaceInput(ctx[:, :, N * c:N * c + N], s) for ctx, s in zip(contexts, scales)] if vace else ()
        got.append(stream.next_chunk(items))
    noises = stream_noises(config, stream.latent_shape, chunks)
    return model, stream, text, noises, got, contexts, scales


INFINITY = {
    "longlive-infinity": dict(),  # sink 3, 12 frames attended (LongLive's config)
    "sink1-attend6": dict(sink_frames=1, attended_frames=6),  # sink and window not aligned to chunks
}


@pytest.mark.parametrize(("name", "with_vace"), [("longlive-infinity", False), ("sink1-attend6", False),
                                                  ("sink1-attend6", True)])
def test_infinity_equals_naive_relative_rope(name, with_vace):
    policy = cache_policy("infinity", N, **INFINITY[name])
    chunks = 8 if name == "longlive-infinity" else 6  # the window rolls several times
    model, stream, text, noises, got, contexts, scales = run_stream(policy, chunks, with_vace)
    assert isinstance(stream.cache, InfinityCache)
    naive = NaiveInfinity(policy, model.config.num_layers, stream.grid[1:], model.config.head_dim)
    with torch.no_grad():
        want = naive_generation(model, text, stream.sigmas, noises, naive, contexts, scales)
    for c, (a, b) in enumerate(zip(got, want)):
        assert rel_err(a, b) <= 1e-4, f"chunk {c}: relative error {rel_err(a, b):.2e}"


DEEP = {
    "small": dict(sink_frames=2, budget_frames=8, recent_frames=4, max_frames=11),  # compresses at chunks 3, 5, 7, 9
    "paper": dict(),  # S 10, N 16, R 4, M 21: compresses at chunks 7, 9
}


@pytest.mark.parametrize("name", DEEP)
def test_deep_forcing_equals_naive_reference(name):
    policy = cache_policy("deep_forcing", N, **DEEP[name])
    chunks = 11 if name == "small" else 10  # small: plans built once are reused from chunk 8 on
    model, stream, text, noises, got, _, _ = run_stream(policy, chunks)
    assert isinstance(stream.cache, DeepForcingCache) and stream.cache.compressed_at is not None
    naive = NaiveDeepForcing(policy, model.config.num_layers, stream.grid[1:], model.config.head_dim)
    with torch.no_grad():
        want = naive_generation(model, text, stream.sigmas, noises, naive)
    for c, (a, b) in enumerate(zip(got, want)):
        assert rel_err(a, b) <= 1e-4, f"chunk {c}: relative error {rel_err(a, b):.2e}"


def test_interrupted_chunks_leave_the_stream_as_it_was():
    """A chunk that fails on any forward (a compressing one included) changes nothing: the retried stream
    equals one that never failed."""
    for name, params, chunks in (("deep_forcing", DEEP["small"], 5), ("infinity", INFINITY["sink1-attend6"], 4)):
        model, clean_stream, text, _, expected, _, _ = run_stream(cache_policy(name, N, **params), chunks)
        stream = WanStream(model, clean_stream.config)
        stream.set_prompt(text)
        got = []
        for c in range(chunks):
            # the first forward (where deep_forcing compresses, chunk 3) and after the clean pass
            for fail_at in (0, 3) if c in (2, 3) else (0,):
                interrupt_chunk(stream, fail_at)
            got.append(stream.next_chunk())
        for c, (a, b) in enumerate(zip(got, expected)):
            assert rel_err(a, b) <= 1e-5, f"{name} chunk {c}"


def test_policy_parameters_text_form_and_errors():
    policy = cache_policy_from_text("deep_forcing:sink_frames=12,budget_frames=18")
    assert (policy.sink_frames, policy.budget_frames, policy.recent_frames, policy.max_frames) == (12, 18, 4, 21)
    policy = cache_policy_from_text("deep_forcing:sink_frames=14,top_frames=3")  # C directly: budget = S + R + C
    assert (policy.sink_frames, policy.top_frames, policy.budget_frames, policy.max_frames) == (14, 3, 21, 21)
    with pytest.raises(ValueError, match="lower sink_frames or top_frames"):
        cache_policy_from_text("deep_forcing:sink_frames=14,top_frames=4")
    with pytest.raises(ValueError, match="not both"):
        cache_policy_from_text("deep_forcing:top_frames=2,budget_frames=16")
    assert isinstance(cache_policy_from_text("infinity"), InfinityPolicy)
    assert cache_policy_from_text("infinity").visible_past(30) == cache_policy("longlive").visible_past(30)
    with pytest.raises(ValueError, match="name=integer"):
        cache_policy_from_text("deep_forcing:sink_frames=ten")
    with pytest.raises(ValueError, match="recent_frames"):
        cache_policy("deep_forcing", N, recent_frames=2)
    with pytest.raises(ValueError, match="budget"):
        cache_policy("deep_forcing", N, budget_frames=30)
    with pytest.raises(ValueError, match="no parameters"):
        cache_policy("longlive", N, sink_frames=2)


def test_prompt_switch_with_long_horizon_policies():
    """infinity re-caches the window under the new prompt (relative RoPE there too); deep_forcing, which keeps no
    fixed frame set, switches from the next chunk on without re-caching."""
    for name, params, recaches in (("infinity", INFINITY["sink1-attend6"], True), ("deep_forcing", DEEP["small"], False)):
        _, stream, _, _, _, _, _ = run_stream(cache_policy(name, N, **params), 4)
        stream.set_prompt(torch.randn(1, 5, TEXT_DIM))
        assert stream._recache_pending == recaches
        after = stream.next_chunk()
        assert torch.isfinite(after).all() and not stream._recache_pending


@pytest.mark.parametrize(("name", "switch_chunk"), [("longlive-infinity", 5), ("sink1-attend6", 2),
                                                    ("sink1-attend6", 4)])
def test_infinity_prompt_switch_equals_longlive_infinity_recache(name, switch_chunk):
    """The re-cache on a prompt switch equals LongLive v1.0's with infinite attention, computed naively in its
    terms: before the first full window (switch at frame 6 with a 6-frame window) every frame is re-cached,
    sink included; after it (frames 15 and 12) the sink keeps its K/V and the window is re-cached."""
    params = INFINITY[name]
    policy = cache_policy("infinity", N, **params)
    chunks = switch_chunk + 3  # the window rolls past the re-cached frames
    new_text = torch.randn(1, 6, TEXT_DIM, generator=torch.Generator().manual_seed(3))
    model, stream, text, noises, got, _, _ = run_stream(policy, chunks, switch=(switch_chunk, new_text))
    naive = NaiveInfinity(policy, model.config.num_layers, stream.grid[1:], model.config.head_dim)
    attended = params.get("attended_frames", 12)
    with torch.no_grad():
        want = naive_generation(model, text, stream.sigmas, noises, naive, switch=(switch_chunk, new_text, attended))
        naive = NaiveInfinity(policy, model.config.num_layers, stream.grid[1:], model.config.head_dim)
        unswitched = naive_generation(model, text, stream.sigmas, noises, naive)
    assert rel_err(want[switch_chunk], unswitched[switch_chunk]) > 1e-2  # the switch changes what follows
    for c, (a, b) in enumerate(zip(got, want)):
        assert rel_err(a, b) <= 1e-5, f"chunk {c}: relative error {rel_err(a, b):.2e}"
