"""Tiny random Wan DiT (+VACE) models in the real key layout, and the reference full-sequence generation
that the streaming engine must reproduce.

STREAMVACE_TEST_DEVICE=cuda runs the models (and so the streaming tests) on a GPU; the default is the CPU.
"""

import os

import torch

from streamvace.models.wan.kv_cache import CachePolicy
from streamvace.models.wan.sampler import model_timestep, predict_x0, renoise
from streamvace.models.wan.vace import combine_hints, vace_hints
from streamvace.models.wan.attention import attention
from streamvace.models.wan.rope import RotaryTable
from streamvace.models.wan.dit import WanConfig, WanDiT

# 2 heads of 128 (Wan's head size, so WanConfig.from_state_dict reads the real head count back), 4 blocks.
TINY = dict(dim=256, ffn_dim=384, num_heads=2, num_layers=4, text_dim=64, freq_dim=32)
TEXT_DIM = TINY["text_dim"]
DEVICE = torch.device(os.environ.get("STREAMVACE_TEST_DEVICE", "cpu"))


def tiny_model(vace: bool = False, seed: int = 0, dtype=torch.float32) -> WanDiT:
    """A random tiny Wan DiT; every layer (head, VACE projections included) has non-zero weights."""
    torch.manual_seed(seed)
    model = WanDiT(WanConfig(**TINY, num_vace_blocks=2 if vace else 0)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight") and param.ndim >= 2:
                param.normal_(0, 1.0 / param.shape[1] ** 0.5 if param.ndim == 2 else 0.05)
            elif name.endswith("bias"):
                param.normal_(0, 0.02)
    return model.to(device=DEVICE, dtype=dtype)


def frame_mask(policy: CachePolicy, chunk_frames: int, total_frames: int, tokens_per_frame: int,
               chunk_local: bool = False) -> torch.Tensor:
    """Token-level bool mask (True = attend) equivalent to the policy: each chunk sees itself + its visible past."""
    frames = torch.zeros(total_frames, total_frames, dtype=torch.bool)
    for start in range(0, total_frames, chunk_frames):
        rows = slice(start, start + chunk_frames)
        frames[rows, start:start + chunk_frames] = True
        if not chunk_local:
            for past in policy.visible_past(start):
                frames[rows, past] = True
    return frames.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1).to(DEVICE)


def reference_generation(model, text, sigmas, noises, policy, chunk_frames, contexts=None, scales=None,
                         hints_in_cache_pass=False, references=None):
    """Generate chunk by chunk WITHOUT a cache: every forward runs over [clean past chunks at t=0 | current chunk].

    noises[c][s] is the noise the stream draws for chunk c at step s. Returns the clean latents of every chunk.
    references[j] (latents [B, 16, n, h, w] or None) puts reference images in front of context j's chunk.
    """
    clean = []
    for c, chunk_noises in enumerate(noises):
        x = chunk_noises[0]
        for s, sigma in enumerate(sigmas):
            v = _masked_forward(model, clean, x, sigma, text, policy, chunk_frames, contexts, scales, c,
                                hints_in_cache_pass, references)
            x0 = predict_x0(x, v, sigma)
            if s + 1 < len(sigmas):
                x = renoise(x0, chunk_noises[s + 1], sigmas[s + 1])
        clean.append(x0)
    return clean


def _masked_forward(model, clean, x, sigma, text, policy, chunk_frames, contexts, scales, chunk, hints_in_past,
                    references=None):
    latents = torch.cat(clean + [x], dim=2)
    batch, total = latents.shape[0], latents.shape[2]
    timesteps = torch.zeros(batch, total, device=latents.device)
    timesteps[:, total - x.shape[2]:] = model_timestep(sigma)
    grid = model.token_grid(latents.shape)
    per_frame = grid[1] * grid[2]
    rope = RotaryTable.for_grid(model.config.head_dim, 0, *grid, device=latents.device)
    text_base, text_vace = model.text_kv(text.to(latents.device))
    e, e0 = model.embed_time(timesteps)
    tokens = model.patchify(latents)
    hints = None
    if contexts:
        vace_mask = frame_mask(policy, chunk_frames, total, per_frame, chunk_local=True)
        attends = [lambda q, k, v: attention(q, k, v, vace_mask)] * len(model.vace_blocks)
        per_context = []
        for j, ctx in enumerate(contexts):
            if references is not None and references[j] is not None:
                hints_j = _reference_hints(model, references[j], ctx[:, :, total - x.shape[2]:total], x, sigma, text_vace)
                pad = tokens.new_zeros(batch, (total - x.shape[2]) * per_frame, tokens.shape[2])
                per_context.append([torch.cat([pad, h], 1) for h in hints_j])
                continue
            ctx_tokens = model.patchify(ctx[:, :, :total].to(latents.device), model.vace_patch_embedding)
            per_context.append(vace_hints(model.vace_blocks, ctx_tokens, tokens, e0, text_vace, rope, attends))
        hints = combine_hints(per_context, scales)
        if not hints_in_past:  # the clean cache pass ran without hints: past frames got none
            keep = torch.zeros(1, total * per_frame, 1, device=latents.device)
            keep[:, (total - x.shape[2]) * per_frame:] = 1
            hints = [(h * keep, scale) for h, scale in hints]
    mask = frame_mask(policy, chunk_frames, total, per_frame)
    out = model.run_blocks(tokens, e0, text_base, rope, [lambda q, k, v: attention(q, k, v, mask)] * len(model.blocks), hints)
    velocity = model.unpatchify(model.head(out, e), grid)
    return velocity[:, :, total - x.shape[2]:]


def reference_switch_generation(model, old, new, sigmas, noises, policy, chunk_frames, switch_chunk):
    """LongLive v1.0's prompt switch (global sink) without a cache: chunks before `switch_chunk` under `old`, then
    one t = 0 re-cache of the last local_attn_size - sink frames under `new`, bidirectional among themselves and
    attending to the sink's old K/V (all frames, sink included, while s <= local_attn_size), then the chunks after.

    local_attn_size = sink + window + chunk (the frames LongLive's KV cache holds; unbounded for full history).
    """
    before = reference_generation(model, old, sigmas, noises[:switch_chunk], policy, chunk_frames)
    clean = torch.cat(before, dim=2)
    s, sink = clean.shape[2], policy.sink_frames
    local = None if policy.window_frames is None else sink + policy.window_frames + chunk_frames
    keep_sink = local is not None and s > local
    first = s - (local - sink) if keep_sink else 0
    per_frame = model.token_grid(clean.shape)[1] * model.token_grid(clean.shape)[2]
    prefix = None
    if keep_sink:  # the sink's K/V as the stream cached them: the t = 0 pass of the clean past, block-causal
        keys = captured_kv(model, clean, old, frame_mask(policy, chunk_frames, s, per_frame))
        prefix = [(k[:, :sink * per_frame], v[:, :sink * per_frame]) for k, v in keys]
    after = []
    for c in range(switch_chunk, len(noises)):
        x = noises[c][0]
        for step, sigma in enumerate(sigmas):
            v = _switch_forward(model, [clean[:, :, first:]] + after, x, sigma, new, policy, chunk_frames, first, s,
                                prefix)
            x0 = predict_x0(x, v, sigma)
            if step + 1 < len(sigmas):
                x = renoise(x0, noises[c][step + 1], sigmas[step + 1])
        after.append(x0)
    return before + after


def captured_kv(model, latents, text, mask):
    """Per base block, the (k, v) of every token of a t = 0 full-sequence forward under `mask`."""
    captured = []

    def attend(q, k, v):
        captured.append((k, v))
        return attention(q, k, v, mask)

    grid = model.token_grid(latents.shape)
    rope = RotaryTable.for_grid(model.config.head_dim, 0, *grid, device=latents.device)
    _, e0 = model.embed_time(torch.zeros(latents.shape[0], device=latents.device))
    model.run_blocks(model.patchify(latents), e0, model.text_kv(text.to(latents.device))[0], rope,
                     [attend] * len(model.blocks))
    return captured


def _switch_forward(model, clean, x, sigma, text, policy, chunk_frames, first, switch, prefix):
    """Velocity of chunk x after a switch: one forward over [re-cached frames | later clean chunks | x]."""
    latents = torch.cat(clean + [x], dim=2)
    batch, count = latents.shape[0], latents.shape[2]
    end = first + count
    grid = model.token_grid(latents.shape)
    per_frame = grid[1] * grid[2]
    sink = policy.sink_frames if prefix is not None else 0
    # columns: [old sink frames (K/V only) | frames first..end-1]
    column = {f: f for f in range(sink)}
    column.update({f: sink + f - first for f in range(first, end)})
    frames = torch.zeros(count, sink + count, dtype=torch.bool)
    frames[:switch - first, :sink + switch - first] = True  # the re-cache: bidirectional among its frames + sink
    for start in range(switch, end, chunk_frames):
        for f in range(start, start + chunk_frames):
            for g in policy.visible_past(start) + list(range(start, start + chunk_frames)):
                frames[f - first, column[g]] = True
    mask = frames.repeat_interleave(per_frame, 0).repeat_interleave(per_frame, 1).to(latents.device)
    timesteps = torch.zeros(batch, count, device=latents.device)
    timesteps[:, count - x.shape[2]:] = model_timestep(sigma)
    e, e0 = model.embed_time(timesteps)
    rope = RotaryTable.for_grid(model.config.head_dim, first, *grid, device=latents.device)

    def attend_for(layer):
        def attend(q, k, v):
            if prefix is not None:
                k, v = torch.cat([prefix[layer][0], k], 1), torch.cat([prefix[layer][1], v], 1)
            return attention(q, k, v, mask)
        return attend

    out = model.run_blocks(model.patchify(latents), e0, model.text_kv(text.to(latents.device))[0], rope,
                           [attend_for(i) for i in range(len(model.blocks))])
    return model.unpatchify(model.head(out, e), grid)[:, :, count - x.shape[2]:]


def _reference_hints(model, ref_latents, ctx, x, sigma, text_vace):
    """The chunk's VACE hints with reference images, as one masked forward of the VACE branch over
    [references | chunk] on its own time axis (references at frames 0..n-1 and t = 0, the chunk at n..): the
    references attend among themselves only, the chunk to both. Context of a reference: [latent | 0 | mask 0]."""
    n, frames = ref_latents.shape[2], x.shape[2]
    ref_ctx = torch.cat([ref_latents, torch.zeros_like(ref_latents),
                         ref_latents.new_zeros(ref_latents.shape[0], ctx.shape[1] - 32, *ref_latents.shape[2:])], 1)
    both = torch.cat([ref_latents, x], dim=2)
    grid = model.token_grid(both.shape)
    per_frame = grid[1] * grid[2]
    rope = RotaryTable.for_grid(model.config.head_dim, 0, *grid, device=x.device)
    timesteps = torch.zeros(x.shape[0], n + frames, device=x.device)
    timesteps[:, n:] = model_timestep(sigma)
    _, e0 = model.embed_time(timesteps)
    allowed = torch.ones(n + frames, n + frames, dtype=torch.bool)
    allowed[:n, n:] = False
    mask = allowed.repeat_interleave(per_frame, 0).repeat_interleave(per_frame, 1).to(x.device)
    attends = [lambda q, k, v: attention(q, k, v, mask)] * len(model.vace_blocks)
    ctx_tokens = model.patchify(torch.cat([ref_ctx, ctx.to(x.device)], 2), model.vace_patch_embedding)
    hints = vace_hints(model.vace_blocks, ctx_tokens, model.patchify(both), e0, text_vace, rope, attends)
    return [h[:, n * per_frame:] for h in hints]


def interrupt_chunk(stream, fail_at: int) -> None:
    """Start the stream's next chunk and stop it by KeyboardInterrupt after forward `fail_at` (a user's cancel)."""
    def stop(i, n):
        if i == fail_at:
            raise KeyboardInterrupt
    try:
        stream.next_chunk(on_step=stop)
    except KeyboardInterrupt:
        return
    raise AssertionError(f"the chunk finished without reaching forward {fail_at}")
