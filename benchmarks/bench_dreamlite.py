"""Benchmark the DreamLite stylize stream at real model sizes with random weights (seed 003's table).

Real sizes: DreamLite-mobile U-Net (389.97 M, upstream dreamlite.json), Qwen3-VL-2B text encoder (2.1 B,
vocabulary 151936), TAESDXL (AutoencoderTiny), Temporal-LLLite on the 38 down_blocks hooks (cond 32, mlp
64), bf16, 512x512, 1 step. Speed does not depend on the weight values. Every configuration row of the issue's
table is measured: the clip is one continuous stream, a warm-up call (compilation, CUDA graphs) runs first on
the same stream, then `--frames` frames (>= 480) are timed.

Reported per configuration:
* fps_wall: frames / wall-clock time of the timed call (text encoder, flows, refreshes, decode, host copies).
* fps_step: "their step-only metric": frames / time of the U-Net steps alone (CUDA events on the main stream).
* batch_ms p50 / p95: per-batch latency, the wall time between consecutive finished batches.

python benchmarks/bench_dreamlite.py --out DIR [--compile reduce-overhead|default|max-autotune|off]
                                    [--compile-text off|default] [--configs NAME,NAME]
python benchmarks/bench_dreamlite.py --smoke --out DIR   # tiny random models on the CPU, a few frames
"""

import argparse
import datetime
import importlib.util
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if importlib.util.find_spec("streamvace") is None:  # a plain checkout: import its root folder as the package
    _spec = importlib.util.spec_from_file_location("streamvace", os.path.join(ROOT, "__init__.py"),
                                                   submodule_search_locations=[ROOT])
    sys.modules["streamvace"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["streamvace"])

from streamvace.models.dreamlite.loader import MOBILE_UNET_CONFIG, DreamLiteModels  # noqa: E402
from streamvace.models.dreamlite.pipeline import StylizeModel, StylizeOptions  # noqa: E402
from streamvace.models.dreamlite.text_encoder import EDIT_INSTRUCTION, EDIT_SYSTEM_PREFIX, EditPromptEncoder  # noqa: E402
from streamvace.models.dreamlite.temporal_lllite import TemporalLLLite  # noqa: E402

# the table: their pipeline (dreamlite-stream's loop) on one H100 80GB, 512², 1 step, bf16, 38 hooks
CONFIGS = [
    dict(name="B8_cond8_te1", batch=8, cond_refresh_every=8, te_refresh_every=1, te_batch_one=False,
         fixed_noise=False, theirs=dict(fps_wall=25.1, fps_step=67.5, p50_ms=274, p95_ms=687)),
    dict(name="B8_cond8_te16_one_fixed", batch=8, cond_refresh_every=8, te_refresh_every=16, te_batch_one=True,
         fixed_noise=True, theirs=dict(fps_wall=46.0, fps_step=60.2, p50_ms=142, p95_ms=405)),
    dict(name="B8_demo_cond4_te16_one_fixed", batch=8, cond_refresh_every=4, te_refresh_every=16, te_batch_one=True,
         fixed_noise=True, theirs=dict(fps_wall=45.4, fps_step=49.9, p50_ms=115, p95_ms=389)),
    dict(name="B16_cond8_te1", batch=16, cond_refresh_every=8, te_refresh_every=1, te_batch_one=False,
         fixed_noise=False, theirs=dict(fps_wall=29.5, fps_step=67.3, p50_ms=500, p95_ms=1015)),
    dict(name="B16_cond8_te16_one", batch=16, cond_refresh_every=8, te_refresh_every=16, te_batch_one=True,
         fixed_noise=False, theirs=dict(fps_wall=44.1, fps_step=61.5, p50_ms=313, p95_ms=676)),
]
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
              r"\s+(?!\S)|\s+")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
PROMPT = "an oil painting style"


def qwen_style_tokenizer():
    """A BPE with Qwen2's pre-tokenizer and whole-word template tokens: 64 system tokens, 192 kept, as upstream."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=5000, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([EDIT_SYSTEM_PREFIX, EDIT_INSTRUCTION.format(PROMPT), "system user assistant"],
                                  trainer)
    return Qwen2Tokenizer(tokenizer_object=tokenizer, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                          pad_token="<|endoftext|>")


def build_models(device, dtype, smoke: bool) -> DreamLiteModels:
    """Random-weight DreamLite-mobile parts: real sizes, or tiny ones for --smoke."""
    from diffusers import AutoencoderTiny, DreamLiteUNetModel, FlowMatchEulerDiscreteScheduler
    from transformers import Qwen3VLConfig, Qwen3VLModel

    tokenizer = qwen_style_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    tokens = dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                  vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    if smoke:
        unet_config = dict(MOBILE_UNET_CONFIG, block_out_channels=[16, 32, 32], attention_head_dim=[1, 2, 2],
                           transformer_layers_per_block=[1, 2, 2], layers_per_block=1, cross_attention_dim=24,
                           encoder_hid_dim=32, addition_time_embed_dim=8, projection_class_embeddings_input_dim=16,
                           norm_num_groups=8)
        text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=8)
        vision = dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                      num_position_embeddings=64, deepstack_visual_indexes=[0])
        vae = dict(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                   num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))
    else:  # Qwen3-VL-2B-Instruct and TAESDXL
        unet_config = MOBILE_UNET_CONFIG
        text = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                    num_attention_heads=16, num_key_value_heads=8, head_dim=128)
        vision = dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                      num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17])
        vae = {}
    text.update(max_position_embeddings=262144, pad_token_id=ids("<|endoftext|>"),
                rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                 "mrope_section": [24, 20, 20] if not smoke else [2, 1, 1], "mrope_interleaved": True})
    vision.update(patch_size=16, temporal_patch_size=2, spatial_merge_size=2, hidden_act="gelu_pytorch_tanh")
    config = Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **tokens)
    config._attn_implementation = "sdpa"
    with torch.device(device):
        unet = DreamLiteUNetModel(**unet_config).to(dtype)
        encoder = Qwen3VLModel(config).to(dtype)
        autoencoder = AutoencoderTiny(**vae).to(dtype)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.16,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    for module in (unet, encoder, autoencoder):
        module.eval().requires_grad_(False)
    return DreamLiteModels(unet, autoencoder, scheduler, EditPromptEncoder(encoder, tokenizer))


def moving_clip(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """A smooth textured scene panning across the frame, IMAGE [T, H, W, 3] float in [0, 1] on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    canvas = torch.nn.functional.interpolate(torch.rand(1, 3, size // 8, size // 8, generator=generator),
                                             size=(size * 2, size * 2), mode="bicubic", align_corners=False)[0]
    frames = torch.empty(count, size, size, 3)
    for t in range(count):  # a slow back-and-forth pan, so Farnebäck has real motion to track
        phase = (t % 200) if (t // 200) % 2 == 0 else 200 - (t % 200)
        x, y = int(phase * size / 200 * 0.8), int(abs(np.sin(t / 37.0)) * size * 0.3)
        frames[t] = canvas[:, y:y + size, x:x + size].permute(1, 2, 0)
    return frames.clamp(0, 1)


def _finite_or_none(value):
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return None if isinstance(value, float) and not np.isfinite(value) else value


def _percentile(values, q):
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run_config(model: StylizeModel, config: dict, size: int, frames: int, warmup: int, cuda: bool) -> dict:
    """Stream warm-up then `frames` frames through one configuration and summarise the timings."""
    batch = config["batch"]
    stylizer = model.stylizer(size, size, batch)
    stylizer.profile_steps = cuda
    stream = stylizer.new_stream(0)
    options = StylizeOptions(PROMPT, steps=1, te_refresh_every=config["te_refresh_every"],
                             te_batch_one=config["te_batch_one"], cond_refresh_every=config["cond_refresh_every"],
                             lllite_strength=1.0, fixed_noise=config["fixed_noise"])
    frames = -(-frames // batch) * batch
    clip = moving_clip(warmup + frames, size)
    stylizer.stylize(clip[:warmup], stream, options)  # compiles, records CUDA graphs, fills every cache
    stylizer.step_events.clear()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    stamps = [time.perf_counter()]
    stylizer.stylize(clip[warmup:], stream, options, on_batch=lambda _: stamps.append(time.perf_counter()))
    wall = stamps[-1] - stamps[0]
    batch_ms = [1000 * (b - a) for a, b in zip(stamps, stamps[1:])]
    step_ms = [start.elapsed_time(end) for start, end in stylizer.step_events] if cuda else []
    result = dict(
        name=config["name"], batch_size=batch, frames=frames, steps=1, size=size,
        cond_refresh_every=config["cond_refresh_every"], te_refresh_every=config["te_refresh_every"],
        te_batch_one=config["te_batch_one"], fixed_noise=config["fixed_noise"],
        fps_wall=frames / wall, fps_step=(batch / (np.mean(step_ms) / 1000)) if step_ms else float("nan"),
        step_ms_mean=float(np.mean(step_ms)) if step_ms else float("nan"),
        batch_ms_p50=_percentile(batch_ms, 50), batch_ms_p95=_percentile(batch_ms, 95),
        batch_ms_mean=float(np.mean(batch_ms)), batch_ms_max=float(np.max(batch_ms)),
        p95_over_p50=_percentile(batch_ms, 95) / _percentile(batch_ms, 50),
        peak_memory_gb=torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan"),
        theirs_h100=config["theirs"])
    return result


def main(argv=None) -> int:
    """Parse arguments, run every selected configuration, print a table and write results JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for dreamlite_results.json")
    parser.add_argument("--smoke", action="store_true", help="tiny random models on the CPU, a few frames")
    parser.add_argument("--compile", default="reduce-overhead", choices=["off", "reduce-overhead", "default",
                                                                          "max-autotune"],
                        help="torch.compile mode for U-Net + LLLite (their runs: reduce-overhead)")
    parser.add_argument("--compile-text", default="off", choices=["off", "default", "max-autotune-no-cudagraphs"],
                        help="also torch.compile the Qwen3-VL decoder layers (no CUDA graphs: they run on the side "
                             "stream)")
    parser.add_argument("--frames", type=int, default=480, help="timed frames per configuration (>= 480)")
    parser.add_argument("--warmup", type=int, default=64, help="frames streamed before timing")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--configs", default="all", help="comma-separated names from CONFIGS, or 'all'")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available() and not args.smoke
    device, dtype = (torch.device("cuda"), torch.bfloat16) if cuda else (torch.device("cpu"), torch.float32)
    if args.smoke:
        args.size, args.frames, args.compile, args.compile_text = 64, 8, "off", "off"
        torch.set_num_threads(1)  # tiny ops: one thread beats two contending ones by far
    elif not cuda:
        parser.error("the full benchmark needs a CUDA GPU; use --smoke on the CPU")
    elif args.frames < 480:
        parser.error("the issue's measurements are over at least 480 steady frames")
    torch.manual_seed(0)
    models = build_models(device, dtype, args.smoke)
    adapter = TemporalLLLite(models.unet, "down_blocks", cond_emb_dim=32, mlp_dim=64)
    with torch.no_grad():
        for module in adapter.modules_dict.values():  # a trained-like adapter: non-zero `up`
            module.up[0].weight.normal_(0, 1e-3)
    model = StylizeModel(models, adapter, compile_unet=None if args.compile == "off" else args.compile,
                         compile_text=None if args.compile_text == "off" else args.compile_text)
    chosen = CONFIGS if args.configs == "all" else [c for c in CONFIGS if c["name"] in args.configs.split(",")]
    results = []
    for config in chosen:
        warmup = config["batch"] if args.smoke else args.warmup
        result = run_config(model, config, args.size, args.frames, warmup, cuda)
        results.append(result)
        theirs = config["theirs"]
        print(f"{result['name']:32s} wall {result['fps_wall']:7.1f} fps (theirs {theirs['fps_wall']}), "
              f"step {result['fps_step']:7.1f} fps (theirs {theirs['fps_step']}), batch p50/p95 "
              f"{result['batch_ms_p50']:.0f}/{result['batch_ms_p95']:.0f} ms (theirs {theirs['p50_ms']}/"
              f"{theirs['p95_ms']}), peak {result['peak_memory_gb']:.1f} GiB", flush=True)
    report = dict(
        benchmark="dreamlite_stylize", date=datetime.datetime.now().isoformat(timespec="seconds"),
        device=torch.cuda.get_device_name() if cuda else "cpu (smoke)", torch=torch.__version__,
        dtype=str(dtype), compile=args.compile, compile_text=args.compile_text, size=args.size, steps=1,
        lllite_hooks=len(adapter.modules_dict), smoke=args.smoke, results=results)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "dreamlite_results.json")
    with open(path, "w") as handle:
        json.dump(_finite_or_none(report), handle, indent=2)  # NaN (not measured) becomes null
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
