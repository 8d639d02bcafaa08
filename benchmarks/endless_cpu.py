"""An endless stream on the CPU: a tiny random Wan DiT generates many chunks under a cache policy, and the
per-chunk time and the process memory are reported per block of chunks. Constant cost forever means the
medians stay flat, resident memory stops growing after the first blocks, and the cache's buffers are the
ones allocated at the start (same addresses, same bytes).

    python -m streamvace.benchmarks.endless_cpu --policy infinity --chunks 10000
    python benchmarks/endless_cpu.py --policy deep_forcing --chunks 10000 --out benchmarks/results

Not a test (it runs for minutes); the JSON it writes goes to benchmarks/results/.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

if __package__ in (None, ""):  # run as a file: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from streamvace.models.wan.dit import WanConfig, WanDiT
from streamvace.models.wan.kv_cache import cache_policy
from streamvace.models.wan.stream import StreamConfig, WanStream


def resident_bytes() -> int:
    """The process's resident memory now (Linux /proc), 0 where unknown."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def tiny_model() -> WanDiT:
    """A random 2-block Wan DiT with one 128-wide head (non-zero head, so outputs move)."""
    torch.manual_seed(0)
    model = WanDiT(WanConfig(dim=128, ffn_dim=256, num_heads=1, num_layers=2, text_dim=32, freq_dim=32)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight") and param.ndim == 2:
                param.normal_(0, param.shape[1] ** -0.5)
    return model


def run(policy: str, chunks: int, block: int, height: int, width: int) -> dict:
    """Generate `chunks` chunks; per block of chunks: median / max ms per chunk and resident memory."""
    torch.set_num_threads(1)
    model = tiny_model()
    stream = WanStream(model, StreamConfig(height=height, width=width, policy=cache_policy(policy), seed=1,
                                           steps=(1000, 500)))
    stream.set_prompt(torch.randn(1, 8, 32))
    buffers = {name: (t.data_ptr(), t.nbytes) for name, t in vars(stream.cache).items() if torch.is_tensor(t)}
    blocks, times = [], []
    for c in range(chunks):
        begin = time.perf_counter()
        latents = stream.next_chunk()
        times.append((time.perf_counter() - begin) * 1e3)
        if len(times) == block:
            blocks.append({"last_chunk": c, "ms_median": round(statistics.median(times), 3),
                           "ms_max": round(max(times), 3), "rss_mib": round(resident_bytes() / 2 ** 20, 1)})
            print(json.dumps(blocks[-1]), flush=True)
            times = []
    same = all((t.data_ptr(), t.nbytes) == buffers[name]
               for name, t in vars(stream.cache).items() if torch.is_tensor(t) and name in buffers)
    return {"policy": policy, "chunks": chunks, "height": height, "width": width,
            "tokens_per_frame": stream.tokens_per_frame, "cache_bytes": stream.cache.nbytes,
            "cache_buffers_unchanged": same, "finite": bool(torch.isfinite(latents).all()),
            "frames_done": stream.frames_done, "torch": torch.__version__, "blocks": blocks}


def main():
    """Command line: policy, chunks, block size, size, output folder."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="infinity")
    parser.add_argument("--chunks", type=int, default=10000)
    parser.add_argument("--block", type=int, default=1000)
    parser.add_argument("--size", default="32x48", help="HxW in pixels (multiples of 16)")
    parser.add_argument("--out", default=None, help="folder for the JSON result")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    with torch.inference_mode():
        result = run(args.policy, args.chunks, args.block, height, width)
    print(json.dumps({k: v for k, v in result.items() if k != "blocks"}))
    if args.out:
        path = os.path.join(args.out, f"endless_cpu_{args.policy}.json")
        with open(path, "w") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
