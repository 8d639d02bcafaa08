"""Benchmark the streaming VAEs: encode and decode ms per 12-frame chunk, full Wan2.1 VAE vs tiny VAE.

    python benchmarks/bench_vae.py --out out/bench_vae            # GPU, bf16, full-size random weights
    python benchmarks/bench_vae.py --smoke --out out/bench_smoke  # CPU, tiny widths, under a minute

Steady state is measured: a stream is started with its first chunk (9 frames / 3 latents), then each
timed call continues it with 12 frames (encode) or 3 latents -> 12 frames (decode), as the engine does.
The first chunk is timed separately (fresh cache each time). Speed does not depend on weight values,
so weights are random unless --wan / --tiny name real files. On a GPU the timed calls run under
torch.cuda.set_sync_debug_mode("error") (a host sync in the per-chunk path fails the benchmark), and
the number of cudaMalloc'd segments added while timing is reported (0: the caching allocator reuses
the same blocks chunk after chunk).
"""

import argparse
import copy
import datetime
import json
import os
import statistics
import time

import torch

from streamvace.models.vae.tiny_vae import TinyVAE, load_tiny_vae
from streamvace.models.vae.wan_vae import WanVAE, WanVAEConfig, load_wan_vae

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv=None):
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/bench_vae", help="folder for results.json")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run to check the script")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: bf16 (fp32 with --smoke)")
    parser.add_argument("--resolutions", default=None, help="HxW list, default 480x832,368x640 (64x96 with --smoke)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--wan", default=None, help="a real Wan2.1 VAE file instead of random weights")
    parser.add_argument("--tiny", default=None, help="a real taew2_1 file instead of random weights")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN autotune its conv algorithms")
    parser.add_argument("--fast-kernels", action="store_true",
                        help="Wan VAE: channels-last convs autotuned by cuDNN + fused RMSNorm/SiLU (use_fast_kernels, the "
                             "default on CUDA); without it the plain layout is timed")
    parser.add_argument("--only", default=None, help="one VAE: wan2.1 or taew2_1")
    args = parser.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    args.dtype = args.dtype or ("fp32" if args.smoke else "bf16")
    args.resolutions = args.resolutions or ("64x96" if args.smoke else "480x832,368x640")
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
    args.iters = args.iters if args.iters is not None else (2 if args.smoke else 10)
    return args


def build_vaes(args):
    """The two VAEs at full size (tiny widths with --smoke), random or from files, on the device in the dtype."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    if args.wan:
        wan = load_wan_vae(args.wan, dtype=dtype, device=device)
    else:
        with device:
            wan = WanVAE(WanVAEConfig(dim=8) if args.smoke else WanVAEConfig())
    if args.tiny:
        tiny = load_tiny_vae(args.tiny, dtype=dtype, device=device)
    else:
        with device:
            tiny = TinyVAE(8, (16, 8, 8, 8)) if args.smoke else TinyVAE()
    vaes = {"wan2.1": wan.to(dtype).eval(), "taew2_1": tiny.to(dtype).eval()}
    if args.fast_kernels:
        wan.use_fast_kernels()
    else:
        wan.auto_fast_kernels = False  # the plain path, for comparison
    return {k: v for k, v in vaes.items() if args.only in (None, k)}


class Timer:
    """Milliseconds of a call: CUDA events on a GPU (read after the sync-checked region), else the wall clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def start(self, fn):
        """Run fn and record its start and end, without waiting for the GPU."""
        if not self.cuda:
            begin = time.perf_counter()
            fn()
            return time.perf_counter() - begin
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        return begin, end

    def stop(self, run) -> float:
        """Wait for the recorded call and return its milliseconds."""
        if not self.cuda:
            return run * 1000.0
        begin, end = run
        end.synchronize()
        return begin.elapsed_time(end)


def _segments() -> int:
    return torch.cuda.memory_stats().get("segment.all.allocated", 0) if torch.cuda.is_available() else 0


def measure(name, op, fn, args, timer, device):
    """Warm up, then time `fn` args.iters times (host syncs forbidden on a GPU); returns one result row."""
    for _ in range(args.warmup):
        fn()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    segments = _segments()
    times = []
    for _ in range(args.iters):
        if cuda:
            torch.cuda.set_sync_debug_mode("error")
        try:
            run = timer.start(fn)
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
        times.append(timer.stop(run))
    frames = 9 if op.endswith("first_chunk") else 12
    row = {"vae": name, "op": op, "frames": frames, "ms_mean": statistics.mean(times),
           "ms_median": statistics.median(times), "ms_min": min(times),
           "fps": frames * 1000.0 / statistics.median(times),
           "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
           "cudamalloc_segments_added_while_timed": _segments() - segments}
    print(f"  {name:8s} {op:20s} median {row['ms_median']:9.2f} ms  ({row['fps']:8.1f} frames/s)"
          + (f"  peak {row['peak_memory_mb']:.0f} MB" if cuda else ""), flush=True)
    return row


def bench_resolution(vae, name, height, width, args, timer):
    """First-chunk and steady-state encode/decode timings of one VAE at one resolution."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    first_frames = torch.rand(1, 3, 9, height, width, device=device, dtype=dtype) * 2 - 1
    chunk_frames = torch.rand(1, 3, 12, height, width, device=device, dtype=dtype) * 2 - 1
    latents = torch.randn(1, 16, 3, height // 8, width // 8, device=device, dtype=dtype)
    encoder, decoder = vae.new_encoder_cache(), vae.new_decoder_cache()
    vae.encode(first_frames, encoder)
    vae.decode(latents, decoder)
    rows = [
        measure(name, "encode_12_frames", lambda: vae.encode(chunk_frames, encoder, check_inputs=False), args, timer, device),
        measure(name, "decode_12_frames", lambda: vae.decode(latents, decoder, check_inputs=False), args, timer, device),
        measure(name, "encode_first_chunk", lambda: vae.encode(first_frames, check_inputs=False), args, timer, device),
        measure(name, "decode_first_chunk", lambda: vae.decode(latents, check_inputs=False), args, timer, device),
    ]
    for row in rows:
        row["resolution"] = f"{height}x{width}"
    return rows


def fast_vs_plain(vae, height, width, device, dtype) -> dict:
    """Relative difference of the fast-kernel Wan VAE from the plain path (same weights), over a first chunk and
    a steady chunk of encode and of decode."""
    plain = copy.deepcopy(vae).use_fast_kernels(False)
    g = torch.Generator(device).manual_seed(3)
    video = (torch.rand(1, 3, 21, height, width, generator=g, device=device) * 2 - 1).to(dtype)
    latents = torch.randn(1, 16, 6, height // 8, width // 8, generator=g, device=device)
    out = {"resolution": f"{height}x{width}"}
    for op, pieces in (("encode", [video[:, :, :9], video[:, :, 9:]]), ("decode", [latents[:, :, :3], latents[:, :, 3:]])):
        results = []
        for model in (vae, plain):
            cache = model.new_encoder_cache() if op == "encode" else model.new_decoder_cache()
            results.append(torch.cat([getattr(model, op)(piece, cache).float() for piece in pieces], dim=2))
        out[f"{op}_rel_diff"] = float((results[0] - results[1]).norm() / results[1].norm())
    print(f"  fast vs plain path {out}", flush=True)
    return out


def main(argv=None) -> int:
    """Run the benchmark, print a table and write results.json."""
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    vaes = build_vaes(args)
    timer = Timer(device)
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "dtype": args.dtype, "smoke": args.smoke, "warmup": args.warmup, "iters": args.iters,
            "cudnn_benchmark": args.cudnn_benchmark, "fast_kernels": args.fast_kernels,
            "weights": {"wan2.1": args.wan or "random", "taew2_1": args.tiny or "random"},
            "parameters": {k: sum(p.numel() for p in v.parameters()) for k, v in vaes.items()}}
    print(f"StreamVACE VAE benchmark on {info['device']}, torch {info['torch']}, {args.dtype}")
    results = []
    for resolution in args.resolutions.split(","):
        height, width = (int(v) for v in resolution.lower().split("x"))
        print(f"{height}x{width}:")
        for name, vae in vaes.items():
            results.extend(bench_resolution(vae, name, height, width, args, timer))
            if name == "wan2.1" and args.fast_kernels:
                results.append(fast_vs_plain(vae, height, width, device, DTYPES[args.dtype]))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.json")
    with open(path, "w") as handle:
        json.dump({**info, "results": results}, handle, indent=2)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
