"""GPU benchmark of the streaming engine: the full Wan2.1-VACE-1.3B DiT (random weights), chunk after chunk.

Times the DiT part of each chunk (4 denoising steps + the t = 0 cache pass; VAE decode excluded) at
480x832 and 368x640, T2V and with one VACE control, after the rolling window is full (constant cost).
The timed chunks run under torch.cuda.set_sync_debug_mode("error"), so any host sync in the chunk loop
fails the benchmark, and the allocator's cudaMalloc count must not change between timed chunks.

    python benchmarks/bench_engine.py --out DIR            # on a GPU
    python benchmarks/bench_engine.py --smoke              # tiny model on the CPU, to check the script
"""

import argparse
import datetime
import json
import os
import time

import torch

from streamvace.models.wan.kv_cache import cache_policy_from_text
from streamvace.models.wan.stream import StreamConfig, VaceInput, WanStream
from streamvace.models.wan.stream_session import Control, StreamSession
from streamvace.models.vae.tiny_vae import TinyVAE
from streamvace.models.wan.vace_reference import VaceReference
from streamvace.models.wan.dit import WanConfig, WanDiT
from streamvace.models.vae.wan_vae import WanVAE, WanVAEConfig

FULL = WanConfig(num_vace_blocks=15)  # Wan2.1-VACE-1.3B: dim 1536, 30 blocks, 15 VACE blocks
SMOKE = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=4, num_vace_blocks=2)


def build_model(config: WanConfig, device, dtype) -> WanDiT:
    """A randomly initialised DiT straight on the device (speed does not depend on the weight values)."""
    with torch.device(device):
        model = WanDiT(config)
    return model.to(dtype).eval().requires_grad_(False)


def _segments():
    return torch.cuda.memory_stats().get("segment.all.allocated", 0) if torch.cuda.is_available() else 0


def time_stream(model, height, width, vace, warmup, chunks, policy):
    """Mean / p50 / max ms per chunk over `chunks` chunks after `warmup` chunks, and the memory it took."""
    device, dtype = model.head.head.weight.device, model.dtype
    stream = WanStream(model, StreamConfig(height=height, width=width, policy=cache_policy_from_text(policy), seed=1))
    stream.set_prompt(torch.randn(1, 512, model.config.text_dim, device=device, dtype=dtype))
    context = torch.randn(1, model.config.vace_in_dim, 3, height // 8, width // 8, device=device)
    reference = None
    if vace == "reference":  # two reference images in the VACE branch, their K/V computed once
        reference = VaceReference(stream, torch.randn(1, model.config.in_dim, 2, height // 8, width // 8, device=device))
    controls = [VaceInput(context, 1.0, reference)] if vace else ()
    for _ in range(warmup):
        stream.next_chunk(controls)
    cuda = device.type == "cuda"
    times, segments_before = [], _segments()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(chunks):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                stream.next_chunk(controls)
                end.record()
                times.append((start, end))
            else:
                t0 = time.perf_counter()
                stream.next_chunk(controls)
                times.append(time.perf_counter() - t0)
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
    if cuda:
        torch.cuda.synchronize()
        ms = sorted(s.elapsed_time(e) for s, e in times)
    else:
        ms = sorted(t * 1000 for t in times)
    mean = sum(ms) / len(ms)
    frames_per_chunk = 4 * stream.config.chunk_frames
    return {
        "height": height, "width": width, "vace": vace, "policy": policy,
        "tokens_per_frame": stream.tokens_per_frame, "attended_frames": stream.cache.capacity_frames,
        "ms_per_chunk_mean": round(mean, 2), "ms_per_chunk_p50": round(ms[len(ms) // 2], 2),
        "ms_per_chunk_max": round(ms[-1], 2), "fps": round(frames_per_chunk / (mean / 1000), 2),
        "kv_cache_gib": round(stream.cache.nbytes / 2**30, 3),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "cudamalloc_segments_added_while_timed": _segments() - segments_before,
    }


def time_end_to_end(model, height, width, encoder, chunks, smoke):
    """Wall-clock ms per chunk of what a user gets: VACE control frames (CPU) -> dual VAE encode -> DiT -> tiny-VAE
    decode -> frames on the CPU. Host copies of frames are part of it, so there is no sync check here."""
    device, dtype = model.head.head.weight.device, model.dtype
    with torch.device(device):
        tiny = (TinyVAE(encoder_width=8, decoder_widths=(16, 8, 8, 8)) if smoke else TinyVAE()).to(dtype).eval()
        wan = (WanVAE(WanVAEConfig(dim=8)) if smoke else WanVAE()).to(dtype).eval() if encoder == "wan" else tiny
    session = StreamSession(model, StreamConfig(height=height, width=width, seed=1), wan)
    session.set_prompt(torch.randn(1, 512, model.config.text_dim))
    video = torch.rand(3, 9 + 12 * (chunks + 4), height, width) * 2 - 1
    control = [Control(frames=video)]
    decoder = tiny.new_decoder_cache()
    times = []
    for i in range(chunks + 4):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            frames = tiny.decode(session.generate(1, control), decoder).float().cpu()
        times.append((time.perf_counter() - t0) * 1000)
    ms = sorted(times[4:])
    mean = sum(ms) / len(ms)
    return {"height": height, "width": width, "control_encoder": encoder, "decoder": "taew2_1",
            "end_to_end_ms_per_chunk_mean": round(mean, 2), "end_to_end_ms_p50": round(ms[len(ms) // 2], 2),
            "frames_per_chunk": int(frames.shape[2]), "end_to_end_fps": round(frames.shape[2] / (mean / 1000), 2)}


def main(argv=None) -> int:
    """Run the benchmark grid and write results.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=".")
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU")
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--policy", default="longlive", help="a cache policy, e.g. infinity or "
                        "deep_forcing:sink_frames=10,budget_frames=16 (time deep_forcing after >= 8 warm-up chunks "
                        "and over an even number: it compresses on every other chunk once the cache is full)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed chunks first (default 5, 8 compiled)")
    parser.add_argument("--compile", action="store_true", help="torch.compile every block (experimental)")
    parser.add_argument("--sizes", default="480x832,368x640")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    model = build_model(SMOKE if args.smoke else FULL, device, dtype)
    if args.compile:
        for block in list(model.blocks) + list(getattr(model, "vace_blocks", [])):
            block.compile(dynamic=False)
    sizes = [(64, 96)] if args.smoke else [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    results = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "date": datetime.date.today().isoformat(), "dtype": str(dtype),
        "model": "smoke" if args.smoke else "Wan2.1-VACE-1.3B (random weights)",
        "steps": "4 warped + t=0 cache pass", "compiled": args.compile, "runs": [],
    }
    for height, width in sizes:
        for vace in (False, True, "reference"):
            run = time_stream(model, height, width, vace, warmup=args.warmup if args.warmup is not None else (8 if args.compile else 5), chunks=2 if args.smoke else args.chunks,
                              policy=args.policy)
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
        for encoder in ("tiny", "wan"):
            run = time_end_to_end(model, height, width, encoder, 2 if args.smoke else args.chunks, args.smoke)
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
    os.makedirs(args.out, exist_ok=True)
    name = "bench_engine_compiled.json" if args.compile else "bench_engine.json"
    with open(os.path.join(args.out, name), "w") as handle:
        json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
