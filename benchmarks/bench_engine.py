"""GPU benchmark of the streaming engine: the full Wan2.1-VACE-1.3B DiT (random weights), chunk after chunk.

Per size (480x832, 368x640) and control (T2V, one VACE control) it times the DiT part of each chunk
(4 denoising steps + the t = 0 cache pass) once the rolling window is full (constant cost), on the eager
path and on the fast path (compiled block regions + CUDA-graph replays), in the same process. The fast
path's timed chunks run under torch.cuda.set_sync_debug_mode("error") and must not recompile (Dynamo's
counters) nor add cudaMalloc segments. It also checks that the fast path equals the eager path on the same
weights and noise (across a ring wrap), measures FP8 against bf16, the end-to-end chunk (control frames on
the CPU -> VAE encode -> DiT -> VAE decode -> frames on the CPU), and writes results.json and summary.json.

    python benchmarks/bench_engine.py --out DIR            # on a GPU
    python benchmarks/bench_engine.py --smoke              # tiny model on the CPU, to check the script
"""

import argparse
import copy
import datetime
import json
import os
import subprocess
import time

import torch

from streamvace.models.vae.async_decode import AsyncDecoder
from streamvace.models.vae.tiny_vae import TinyVAE
from streamvace.models.vae.wan_vae import WanVAE, WanVAEConfig
from streamvace.models.wan.dit import WanConfig, WanDiT
from streamvace.models.wan.fast_path import compile_blocks, uncompile_blocks
from streamvace.models.wan.fp8 import quantize_blocks_fp8
from streamvace.models.wan.kv_cache import cache_policy
from streamvace.models.wan.stream import StreamConfig, VaceInput, WanStream
from streamvace.models.wan.stream_session import Control, StreamSession

FULL = WanConfig(num_vace_blocks=15)  # Wan2.1-VACE-1.3B: dim 1536, 30 blocks, 15 VACE blocks
SMOKE = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=4, num_vace_blocks=2)


def build_model(config: WanConfig, device, dtype) -> WanDiT:
    """A randomly initialised DiT straight on the device (speed does not depend on the weight values)."""
    torch.manual_seed(0)
    with torch.device(device):
        model = WanDiT(config)
    return model.to(dtype).eval().requires_grad_(False)


def _segments():
    return torch.cuda.memory_stats().get("segment.all.allocated", 0) if torch.cuda.is_available() else 0


def _graphs_count():
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def new_stream(model, height, width, fast, policy="longlive", seed=1):
    """A stream with a random prompt; `fast` = CUDA-graph replays (the model's blocks compiled or not)."""
    device = model.head.head.weight.device
    stream = WanStream(model, StreamConfig(height=height, width=width, policy=cache_policy(policy), seed=seed),
                       cuda_graphs=fast and device.type == "cuda")
    g = torch.Generator(device).manual_seed(5)
    stream.set_prompt(torch.randn(1, 512, model.config.text_dim, device=device, dtype=model.dtype, generator=g))
    return stream


def _controls(model, height, width, vace):
    if not vace:
        return ()
    device = model.head.head.weight.device
    g = torch.Generator(device).manual_seed(6)
    context = torch.randn(1, model.config.vace_in_dim, 3, height // 8, width // 8, device=device, generator=g)
    return [VaceInput(context, 1.0)]


def time_stream(model, height, width, vace, warmup, chunks, fast, policy="longlive"):
    """ms per chunk over `chunks` chunks after `warmup` chunks, with the checks named in the module docstring."""
    device = model.head.head.weight.device
    cuda = device.type == "cuda"
    stream = new_stream(model, height, width, fast, policy)
    controls = _controls(model, height, width, vace)
    warmup_ms = []
    for _ in range(warmup):  # the first chunks fill the cache (eager); the first steady one captures the graphs
        t0 = time.perf_counter()
        stream.next_chunk(controls)
        if cuda:
            torch.cuda.synchronize()
        warmup_ms.append(round((time.perf_counter() - t0) * 1000, 1))
    times, segments_before, graphs_before = [], _segments(), _graphs_count()
    if cuda:
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
                t = time.perf_counter()
                stream.next_chunk(controls)
                times.append(time.perf_counter() - t)
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
    if cuda:
        torch.cuda.synchronize()
        ms = [s.elapsed_time(e) for s, e in times]
    else:
        ms = [t * 1000 for t in times]
    srt = sorted(ms)
    mean = sum(ms) / len(ms)
    third = max(1, len(ms) // 3)
    return {
        "height": height, "width": width, "vace": bool(vace), "policy": policy, "fast": fast,
        "compiled": bool(getattr(model, "compiled", False)), "fp8": bool(getattr(model, "fp8", False)),
        "timed_chunks": chunks, "ms_per_chunk_mean": round(mean, 2), "ms_per_chunk_p50": round(srt[len(ms) // 2], 2),
        "ms_per_chunk_max": round(srt[-1], 2), "fps": round(4 * stream.config.chunk_frames / (mean / 1000), 2),
        "first_third_ms": round(sum(ms[:third]) / third, 2), "last_third_ms": round(sum(ms[-third:]) / third, 2),
        "warmup_chunks_ms": warmup_ms,
        "recompiles_while_timed": _graphs_count() - graphs_before, "host_syncs_while_timed": 0,
        "kv_cache_gib": round(stream.cache.nbytes / 2**30, 3),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "cudamalloc_segments_added_while_timed": _segments() - segments_before,
    }


def compare_paths(model_a, model_b, height, width, vace, chunks, fast_a, fast_b):
    """Relative difference per chunk between two streams on the same weights and noise."""
    streams = [new_stream(m, height, width, f) for m, f in ((model_a, fast_a), (model_b, fast_b))]
    controls = _controls(model_a, height, width, vace)
    errors = []
    for _ in range(chunks):
        a, b = (s.next_chunk(controls) for s in streams)
        errors.append(round(((a - b).float().norm() / a.float().norm()).item(), 5))
    return errors


def time_end_to_end(model, height, width, vace, decoder_kind, chunks, smoke, fast, overlap=False):
    """Wall-clock ms per chunk of what a user gets: control frames on the CPU -> dual VAE encode -> DiT -> VAE
    decode -> frames on the CPU (a synchronising copy, as a consumer needs the pixels).

    overlap: decode chunk N on a side stream while chunk N+1's DiT runs (AsyncDecoder, as the CLI does); the
    time per chunk is then the time between two deliveries of frames, in the VAE's dtype.
    """
    device, dtype = model.head.head.weight.device, model.dtype
    with torch.device(device):
        tiny = (TinyVAE(encoder_width=8, decoder_widths=(16, 8, 8, 8)) if smoke else TinyVAE()).to(dtype).eval()
        wan = (WanVAE(WanVAEConfig(dim=8)) if smoke else WanVAE()).to(dtype).eval() if decoder_kind == "wan" else None
        if wan is not None and device.type == "cuda":
            wan.use_fast_kernels()  # what the loaders do on CUDA
    decoder = wan or tiny
    session = StreamSession(model, StreamConfig(height=height, width=width, seed=1), tiny)
    session.stream.cuda_graphs = fast and device.type == "cuda"
    session.set_prompt(torch.randn(1, 512, model.config.text_dim))
    video = torch.rand(3, 9 + 12 * (chunks + 6), height, width) * 2 - 1
    controls = [Control(frames=video)] if vace else ()
    if overlap:
        times, frames = _time_overlapped(session, decoder, controls, chunks + 6)
    else:
        cache, times = decoder.new_decoder_cache(), []
        for _ in range(chunks + 6):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.inference_mode():
                frames = decoder.decode(session.generate(1, controls), cache).float().cpu()
            times.append((time.perf_counter() - t0) * 1000)
    ms = sorted(times[6:])
    mean = sum(ms) / len(ms)
    return {"height": height, "width": width, "vace": bool(vace), "control_encoder": "taew2_1" if vace else None,
            "decoder": "wan2.1" if decoder_kind == "wan" else "taew2_1", "fast": fast, "async_decode": overlap,
            "end_to_end_ms_per_chunk_mean": round(mean, 2), "end_to_end_ms_p50": round(ms[len(ms) // 2], 2),
            "frames_per_chunk": int(frames.shape[2]), "end_to_end_fps": round(frames.shape[2] / (mean / 1000), 2)}


def _time_overlapped(session, decoder, controls, chunks):
    """ms between consecutive deliveries of frames over `chunks` chunks decoded by an AsyncDecoder, and the last
    chunk's frames (chunk 0's time runs from the start)."""
    delivered = []
    t0 = time.perf_counter()
    with torch.inference_mode(), AsyncDecoder() as decoded:
        for _ in range(chunks):
            decoded.submit(decoder, session.generate(1, controls))
            delivered += [(time.perf_counter(), frames) for frames in decoded.take()]
        delivered += [(time.perf_counter(), frames) for frames in decoded.drain()]
    stamps = [t0] + [t for t, _ in delivered]
    return [(b - a) * 1000 for a, b in zip(stamps, stamps[1:])], delivered[-1][1]


def time_session_sync_free(model, height, width, chunks):
    """StreamSession.generate with a depth-like control whose frames start on the CPU, under sync-debug 'error'."""
    device, dtype = model.head.head.weight.device, model.dtype
    with torch.device(device):
        tiny = TinyVAE().to(dtype).eval()
    session = StreamSession(model, StreamConfig(height=height, width=width, seed=1), tiny)
    session.set_prompt(torch.randn(1, 512, model.config.text_dim))
    video = torch.rand(3, 9 + 12 * (chunks + 6), height, width) * 2 - 1
    controls = [Control(frames=video)]
    session.generate(6, controls)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(chunks):
            session.generate(1, controls)
        end.record()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return {"height": height, "width": width, "chunks": chunks, "host_syncs": 0,
            "ms_per_chunk": round(start.elapsed_time(end) / chunks, 2)}


def gpu_ms(fn, calls: int) -> float:
    """GPU milliseconds per call of fn over `calls` calls after 3 warm-up calls (CUDA events)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls


def time_attention_kernels(height, width, device, dtype):
    """ms of each attention a steady chunk runs, per kernel: the chunk's queries over the full LongLive cache
    (self), over the chunk alone (the VACE blocks) and over the 512 text tokens (cross); the SDPA kernels, and
    flash-attn / SageAttention where installed, with each one's difference from float32."""
    from streamvace.models.wan.attention import PACKAGES, attention, available_backends

    n = (height // 16) * (width // 16)
    kernels = {"cudnn": "sdpa_cudnn", "flash": "sdpa_flash", "efficient": "sdpa_efficient"}
    kernels.update({name: name for name in PACKAGES if name in available_backends()})
    out = {}
    for shape, keys in (("self", 12 * n), ("vace_chunk", 3 * n), ("cross_text", 512)):
        q = torch.randn(1, 3 * n, 12, 128, device=device, dtype=dtype)
        k, v = (torch.randn(1, keys, 12, 128, device=device, dtype=dtype) for _ in range(2))
        reference = attention(q.float(), k.float(), v.float())
        for name, backend in kernels.items():
            label = name if shape == "self" else f"{shape}_{name}"  # the self rows keep their earlier names
            try:
                ms = gpu_ms(lambda: attention(q, k, v, backend=backend), 20)
                result = attention(q, k, v, backend=backend)
                out[label] = {"ms": round(ms, 4), "tflops": round(4 * 12 * 3 * n * keys * 128 / ms / 1e9, 1)}
                error = (result.float() - reference).norm() / reference.norm()
                out[label]["relative_error_vs_fp32"] = float(error)
            except (RuntimeError, ImportError) as error:
                out[label] = {"error": str(error).splitlines()[0][:200]}
    return out


def time_fp8_quantization(model, height, width):
    """The FFN's GELU + row-wise e4m3 quantisation of one chunk's tokens: the Triton kernel against the same
    arithmetic compiled by Inductor (its own fusion), ms per call and the kernel's difference from it."""
    from streamvace.models.wan import triton_kernels
    from streamvace.models.wan.fp8 import E4M3_MAX

    def inductor_reference(x):
        x = torch.nn.functional.gelu(x, approximate="tanh")
        scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
        return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale

    tokens = 3 * (height // 16) * (width // 16)
    x = torch.randn(tokens, model.blocks[0].ffn[0].out_features, device="cuda", dtype=torch.bfloat16) * 2
    out = {"shape": list(x.shape)}
    compiled = torch.compile(inductor_reference, dynamic=False)
    for name, fn in (("triton_kernel", lambda: triton_kernels.quantize_rows_e4m3(x, True)), ("inductor", lambda: compiled(x))):
        out[f"{name}_us"] = round(gpu_ms(fn, 50) * 1000, 1)
    (values, scale), (ref_values, ref_scale) = triton_kernels.quantize_rows_e4m3(x, True), compiled(x)
    dequantized, reference = values.float() * scale, ref_values.float() * ref_scale
    out["scale_max_rel_diff"] = float(((scale - ref_scale).abs() / ref_scale).max())
    out["dequantized_rel_diff"] = float((dequantized - reference).norm() / reference.norm())
    return out


def time_ffn_epilogue(model, height, width):
    """The FFN's first Linear + GELU on a chunk's tokens: bias and GELU in the matmul epilogue (what compiled
    blocks run on CUDA) against the two modules one after another, us per call and the relative difference."""
    from streamvace.models.wan.blocks import linear_gelu

    first, gelu, _ = model.blocks[0].ffn
    h = torch.randn(1, 3 * (height // 16) * (width // 16), model.config.dim, device="cuda", dtype=model.dtype)
    out = {}
    for name, fn in (("epilogue", lambda: linear_gelu(first, h)), ("modules", lambda: gelu(first(h)))):
        out[f"{name}_us"] = round(gpu_ms(fn, 50) * 1000, 1)
    fused, reference = linear_gelu(first, h).float(), gelu(first(h)).float()
    out["rel_diff"] = float((fused - reference).norm() / reference.norm())
    return out


def time_norm_rope(model, height, width):
    """q/k RMSNorm + RoPE of one chunk's tokens: the Triton kernel (what compiled blocks run on CUDA) against
    Inductor's own fusion of the reference steps, us per call and the kernel's difference from it."""
    from streamvace.models.wan.rope import RotaryTable
    from streamvace.models.wan.triton_kernels import rms_norm_rope

    attention = model.blocks[0].self_attn
    heads, norm = attention.num_heads, attention.norm_q
    x = torch.randn(1, 3 * (height // 16) * (width // 16), model.config.dim, device="cuda", dtype=model.dtype) * 3
    table = RotaryTable.for_grid(model.config.head_dim, 9, 3, height // 16, width // 16, device="cuda")
    inductor = torch.compile(lambda h: table.apply(norm(h).unflatten(-1, (heads, -1))), dynamic=False)
    out = {}
    for name, fn in (("triton_kernel", lambda: rms_norm_rope(x, norm.weight, norm.eps, table.cos, table.sin, heads)),
                     ("inductor", lambda: inductor(x))):
        out[f"{name}_us"] = round(gpu_ms(fn, 50) * 1000, 1)
    kernel = rms_norm_rope(x, norm.weight, norm.eps, table.cos, table.sin, heads).float()
    reference = inductor(x).float()
    out["rel_diff"] = float((kernel - reference).norm() / reference.norm())
    return out


def profile_chunk(model, height, width, vace, out_dir, name="profile"):
    """Kernel table of two steady chunks (compiled blocks, no graphs, so every kernel shows), top 60 by GPU time,
    and the GPU time per kernel family."""
    from torch.profiler import ProfilerActivity, profile

    stream = new_stream(model, height, width, False)
    controls = _controls(model, height, width, vace)
    for _ in range(5):
        stream.next_chunk(controls)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            stream.next_chunk(controls)
        torch.cuda.synchronize()
    events = prof.key_averages()
    table = events.table(sort_by="cuda_time_total", row_limit=60, max_name_column_width=110)
    table += "\n" + _kernel_categories(events, chunks=2)
    with open(os.path.join(out_dir, f"{name}_{'vace' if vace else 't2v'}_{height}x{width}.txt"), "w") as handle:
        handle.write(table)
    return table


_CATEGORIES = (("attention", ("flash", "fmha", "cudnn", "sdpa", "attention")),
               ("matmul", ("gemm", "xmma", "cutlass", "nvjet", "cublas")),
               ("triton", ("triton",)))


def _kernel_categories(events, chunks):
    """GPU ms per chunk and launches per chunk of each kernel family, so time outside attention and matmuls shows."""
    totals = {}
    for event in events:
        if event.self_device_time_total <= 0 or not event.key:  # host-side events (launch calls) have none
            continue
        name = event.key.lower()
        family = next((f for f, marks in _CATEGORIES if any(m in name for m in marks)), "other")
        ms, count = totals.get(family, (0.0, 0))
        totals[family] = (ms + event.self_device_time_total / 1000 / chunks, count + event.count // chunks)
    lines = [f"{family:10s} {ms:8.1f} ms/chunk {count:7d} kernels/chunk" for family, (ms, count) in sorted(totals.items())]
    return "\n".join(lines) + "\n"


def time_wan_vae(height, width, smoke):
    """The Wan VAE's steady 12-frame encode and decode at one size, timed as bench_vae.py times them (fast
    kernels, as the loaders run it on CUDA; median of 10 after 3 warm-ups), so summary.json has them from this run."""
    import bench_vae  # beside this file

    args = bench_vae.parse_args(["--fast-kernels", "--only", "wan2.1", "--resolutions", f"{height}x{width}",
                                 *(["--smoke"] if smoke else [])])
    (vae,) = bench_vae.build_vaes(args).values()
    rows = bench_vae.bench_resolution(vae, "wan2.1", height, width, args, bench_vae.Timer(torch.device(args.device)))
    return {row["op"]: round(row["ms_median"], 2) for row in rows}


def _commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except OSError:
        return None


def main(argv=None) -> int:
    """Run the benchmark grid and write results.json and summary.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=".")
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU")
    parser.add_argument("--chunks", type=int, default=100, help="timed chunks on the fast path")
    parser.add_argument("--eager-chunks", type=int, default=20, help="timed chunks on the eager path")
    parser.add_argument("--sizes", default="480x832,368x640")
    parser.add_argument("--only", default="eager,fast,compare,attention,fp8,e2e,vae,session",
                        help="comma-separated sections to run")
    parser.add_argument("--commit", default=None, help="the commit measured (default: git rev-parse)")
    parser.add_argument("--e2e-rows", default="all", choices=("all", "summary"),
                        help="end-to-end rows: every size x control x decoder, or only those summary.json tracks")
    parser.add_argument("--merge", default=None,
                        help="results.json of an earlier part of this run (same commit and device): its rows join "
                             "this part's, so one summary.json covers a run split over several calls")
    parser.add_argument("--policies", default="longlive,infinity,deep_forcing",
                        help="cache policies timed by the opt-in 'policies' section (--only policies), T2V at the "
                             "first size, after 24 warm-up chunks (every layout deep_forcing meets is built by then; it compresses from chunk 7 on, then on "
                             "every other chunk: time an even number of chunks)")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    cuda = device.type == "cuda"
    dtype = torch.float32 if not cuda else torch.bfloat16
    sections = set(args.only.split(","))
    model = build_model(SMOKE if args.smoke else FULL, device, dtype)
    sizes = [(64, 96)] if args.smoke else [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    chunks, eager_chunks = (3, 2) if args.smoke else (args.chunks, args.eager_chunks)
    results = {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
        "date": datetime.date.today().isoformat(), "commit": args.commit or _commit(), "dtype": str(dtype),
        "model": "smoke" if args.smoke else "Wan2.1-VACE-1.3B (random weights)",
        "steps": "4 warped + t=0 cache pass", "policy": "longlive", "runs": {},
    }

    if args.merge:
        with open(args.merge) as handle:
            earlier = json.load(handle)
        if (earlier["commit"], earlier["device"]) != (results["commit"], results["device"]):
            raise SystemExit(f"--merge {args.merge}: measured at {earlier['commit']} on {earlier['device']}, "
                             f"not {results['commit']} on {results['device']}")
        results["runs"].update(earlier["runs"])

    os.makedirs(args.out, exist_ok=True)

    def record(name, value):
        results["runs"][name] = value
        print(name, json.dumps(value), flush=True)
        with open(os.path.join(args.out, "results.json"), "w") as handle:  # kept if a later section dies
            json.dump(results, handle, indent=2)

    for height, width in sizes:
        tag = f"{height}x{width}"
        if "eager" in sections:
            uncompile_blocks(model)
            for vace in (False, True):
                record(f"eager_{'vace' if vace else 't2v'}_{tag}",
                       time_stream(model, height, width, vace, warmup=5, chunks=eager_chunks, fast=False))
    backend = "inductor" if cuda else "eager"  # the smoke run checks the script, not the kernels
    if sections & {"fast", "compare", "fp8", "e2e", "session"}:  # every fast-path section runs compiled blocks
        compile_blocks(model, backend=backend)
    for height, width in sizes:
        tag = f"{height}x{width}"
        if "fast" in sections:
            for vace in (False, True):
                record(f"fast_{'vace' if vace else 't2v'}_{tag}",
                       time_stream(model, height, width, vace, warmup=6, chunks=chunks, fast=cuda))
            # a new stream on a warm process: compiled code reused, its graphs captured on its first steady chunk
            record(f"fast_vace_{tag}_new_stream", time_stream(model, height, width, True, warmup=6, chunks=3, fast=cuda))
        if "attention" in sections and cuda:
            record(f"attention_{tag}", time_attention_kernels(height, width, device, dtype))
            record(f"ffn_epilogue_{tag}", time_ffn_epilogue(model, height, width))
            record(f"norm_rope_{tag}", time_norm_rope(model, height, width))
    if "policies" in sections:  # each policy on the fast path: compiled blocks, steady chunks replayed from CUDA graphs
        if "fast" not in sections and "compare" not in sections and "fp8" not in sections:
            compile_blocks(model, backend=backend)
        height, width = sizes[0]
        for name in args.policies.split(","):
            record(f"policy_{name}_{height}x{width}", time_stream(model, height, width, False, warmup=24,
                                                                  chunks=eager_chunks, fast=cuda, policy=name))
    height, width = sizes[0]
    if "profile" in sections and cuda:
        for vace in (False, True):
            print(profile_chunk(model, height, width, vace, args.out), flush=True)
    if "compare" in sections:
        uncompile_blocks(model)
        eager = copy.deepcopy(model)
        compile_blocks(model, backend=backend)
        for vace in (False, True):
            record(f"fast_vs_eager_rel_error_{'vace' if vace else 't2v'}",
                   compare_paths(eager, model, height, width, vace, 8, False, cuda))
        del eager
    if "fp8" in sections and cuda:
        record("fp8_quantize_kernel", time_fp8_quantization(model, height, width))
    if "fp8" in sections:
        uncompile_blocks(model)
        fp8 = copy.deepcopy(model)
        compile_blocks(model, backend=backend)
        quantize_blocks_fp8(fp8)
        compile_blocks(fp8, backend=backend)
        record("fp8_t2v", time_stream(fp8, height, width, False, warmup=6, chunks=chunks, fast=cuda))
        if "profile" in sections and cuda:
            print(profile_chunk(fp8, height, width, False, args.out, name="profile_fp8"), flush=True)
        errors = compare_paths(model, fp8, height, width, False, 2 if args.smoke else 50, cuda, cuda)
        record("fp8_vs_bf16_rel_error", {"chunk_1": errors[0], "chunk_50": errors[-1], "all": errors})
        del fp8
    if "vae" in sections:
        for height, width in sizes:
            record(f"wan_vae_{height}x{width}_ms", time_wan_vae(height, width, args.smoke))
    if "e2e" in sections:
        for height, width in sizes:
            for vace, decoder in ((True, "tiny"), (False, "tiny"), (False, "wan")):
                if args.e2e_rows == "summary" and (vace != ((height, width) == (368, 640))):
                    continue  # summary.json tracks VACE at 368x640 and T2V at 480x832
                for overlap in (False, True):  # decode after each chunk, or beside the next chunk's DiT
                    record(f"e2e_{'vace' if vace else 't2v'}_{decoder}{'_async' if overlap else ''}_{height}x{width}",
                           time_end_to_end(model, height, width, vace, decoder, 2 if args.smoke else 30, args.smoke,
                                           cuda, overlap))
    if "session" in sections and cuda:
        record("session_sync_free", time_session_sync_free(model, *sizes[-1], 10))
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    with open(os.path.join(args.out, "summary.json"), "w") as handle:
        json.dump(summarize(results), handle, indent=2)
    print(json.dumps(summarize(results), indent=1))
    return 0


def summarize(results: dict) -> dict:
    """The headline numbers the speed issue tracks, from one run (None where a section did not run)."""
    runs = results["runs"]

    def get(name, key):
        return runs.get(name, {}).get(key) if isinstance(runs.get(name), dict) else None

    def overhead(tag):
        t2v, vace = get(f"fast_t2v_{tag}", "ms_per_chunk_mean"), get(f"fast_vace_{tag}", "ms_per_chunk_mean")
        return round(vace / t2v - 1, 3) if t2v and vace else None

    fast = [r for n, r in runs.items() if n.startswith("fast_") and isinstance(r, dict) and "recompiles_while_timed" in r]
    fp8, bf16 = get("fp8_t2v", "ms_per_chunk_mean"), get("fast_t2v_480x832", "ms_per_chunk_mean")
    return {
        "device": results["device"], "date": results["date"], "commit": results["commit"], "torch": results["torch"],
        "t2v_dit_480x832_ms": get("fast_t2v_480x832", "ms_per_chunk_mean"),
        "t2v_dit_368x640_ms": get("fast_t2v_368x640", "ms_per_chunk_mean"),
        "vace_dit_480x832_ms": get("fast_vace_480x832", "ms_per_chunk_mean"),
        "vace_dit_368x640_ms": get("fast_vace_368x640", "ms_per_chunk_mean"),
        "vace_overhead_480x832": overhead("480x832"), "vace_overhead_368x640": overhead("368x640"),
        "e2e_vace_368x640_tiny_fps": get("e2e_vace_tiny_368x640", "end_to_end_fps"),
        "e2e_t2v_480x832_tiny_fps": get("e2e_t2v_tiny_480x832", "end_to_end_fps"),
        "e2e_t2v_480x832_wan_fps": get("e2e_t2v_wan_480x832", "end_to_end_fps"),
        "e2e_t2v_480x832_wan_async_fps": get("e2e_t2v_wan_async_480x832", "end_to_end_fps"),
        "e2e_t2v_480x832_tiny_async_fps": get("e2e_t2v_tiny_async_480x832", "end_to_end_fps"),
        "e2e_vace_368x640_tiny_async_fps": get("e2e_vace_tiny_async_368x640", "end_to_end_fps"),
        "wan_decode_480x832_ms": get("wan_vae_480x832_ms", "decode_12_frames"),
        "wan_encode_480x832_ms": get("wan_vae_480x832_ms", "encode_12_frames"),
        "fp8_speedup_480x832": round(bf16 / fp8, 3) if fp8 and bf16 else None,
        "fp8_rel_error_chunk_1": get("fp8_vs_bf16_rel_error", "chunk_1"),
        "fp8_rel_error_chunk_50": get("fp8_vs_bf16_rel_error", "chunk_50"),
        "eager_t2v_dit_480x832_ms": get("eager_t2v_480x832", "ms_per_chunk_mean"),
        "eager_t2v_dit_368x640_ms": get("eager_t2v_368x640", "ms_per_chunk_mean"),
        "first_chunks_new_stream_368x640_vace_ms": get("fast_vace_368x640_new_stream", "warmup_chunks_ms"),
        "recompiles_while_timed": sum(r["recompiles_while_timed"] for r in fast) if fast else None,
        "host_syncs_while_timed": 0 if fast else None,
        "peak_memory_480x832_gib": get("fast_vace_480x832", "peak_memory_gib"),
    }


if __name__ == "__main__":
    raise SystemExit(main())
