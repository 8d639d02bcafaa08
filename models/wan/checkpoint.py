"""Wan2.1 DiT checkpoints in every distribution users have, loaded into models/wan/dit.py.

Handled: Wan-AI files (no prefix, possibly sharded in a folder), Comfy-Org repackaged single files
(`model.diffusion_model.`), Self-Forcing / LongLive training checkpoints (`generator` / `generator_ema`
dicts with `model.`, FSDP wrappers), Wan-AI `*-Diffusers` naming, VACE-only module files combined with a
base model, LoRAs merged at load (LongLive's PEFT `lora_A/lora_B`, kohya `lora_down/lora_up/alpha`), and
fp32 / fp16 / bf16 / fp8 (e4m3, e5m2, with optional `scale_weight`) stored weights.
"""

import glob
import os
import re

import torch

from ..checkpoint_io import (SAFETENSORS_SUFFIXES, CheckpointError, check_finite_weights, key_summary, nonfinite_error,
                             nonfinite_names, read_checkpoint, safetensors_keys)
from .dit import WanConfig, WanDiT

WRAPPERS = ("generator_ema", "generator", "generator_lora", "state_dict", "model", "module")
PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "model.", "transformer.")
FP8_DTYPES = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name))
SHARD = re.compile(r"-\d{5}-of-\d{5}\.(safetensors|bin|pth)$")
LORA_MARKERS = (".lora_A.", ".lora_B.", ".lora_down.", ".lora_up.", "lora_A.weight", "lora_down.weight")

# Wan-AI *-Diffusers names -> original names (inverse of diffusers' convert_wan_transformer_to_diffusers).
_FROM_DIFFUSERS = [
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"\.scale_shift_table$", ".modulation"),
    (r"\.attn1\.", ".self_attn."), (r"\.attn2\.", ".cross_attn."),
    (r"\.to_q\.", ".q."), (r"\.to_k\.", ".k."), (r"\.to_v\.", ".v."), (r"\.to_out\.0\.", ".o."),
    (r"\.ffn\.net\.0\.proj\.", ".ffn.0."), (r"\.ffn\.net\.2\.", ".ffn.2."),
    (r"\.norm2\.", ".norm3."),  # diffusers calls the affine pre-cross-attention norm "norm2"
    (r"^(vace_blocks\.\d+)\.proj_in\.", r"\1.before_proj."), (r"^(vace_blocks\.\d+)\.proj_out\.", r"\1.after_proj."),
]


def _unwrap(obj, path, use_ema=True):
    """Descend through training-checkpoint wrappers to the flat {name: tensor} dict."""
    while isinstance(obj, dict) and obj and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        order = WRAPPERS if use_ema else ("generator",) + WRAPPERS
        inner = next((obj[k] for k in order if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise CheckpointError(f"{path}: a dict of {key_summary(obj.keys())} with no weights dict inside "
                                  f"(looked for {', '.join(WRAPPERS)}); this is not a model checkpoint.")
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: holds no tensors ({type(obj).__name__}); this is not a model checkpoint.")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _strip_prefixes(sd):
    sd = {k.replace("_fsdp_wrapped_module.", "").replace("_orig_mod.", ""): v for k, v in sd.items()}
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                changed = True
    return sd


def _from_diffusers(sd):
    converted = {}
    for key, value in sd.items():
        for pattern, replacement in _FROM_DIFFUSERS:
            key = re.sub(pattern, replacement, key)
        converted[key] = value
    return converted


def describe_state_dict(sd: dict) -> str:
    """What a (prefix-free) state dict looks like, in words, for messages."""
    keys = list(sd)
    has = lambda *parts: any(any(p in k for p in parts) for k in keys)  # noqa: E731
    if has(*LORA_MARKERS):
        return "a LoRA"
    if "head.modulation" in sd:
        return "a Wan2.1 DiT with VACE" if "vace_patch_embedding.weight" in sd else "a Wan2.1 DiT"
    if keys and all(k.startswith("vace_") for k in keys):
        return "a Wan VACE module (VACE blocks only)"
    if has("condition_embedder."):
        return "a Wan DiT in diffusers naming"
    if has("input_blocks.", "down_blocks.", "conv_in."):
        return "a Stable Diffusion-style U-Net"
    if has("double_blocks.", "single_blocks."):
        return "a Flux / Hunyuan-style DiT"
    if has("decoder.middle.", "encoder.downsamples."):
        return "a Wan VAE"
    if has("encoder.block.", "shared.weight", "token_embedding."):
        return "a T5 text encoder"
    if has("decoder.1.", "encoder.0."):
        return "a tiny VAE (TAEHV)"
    return "an unknown model"


FILE_KINDS = ("dit", "vace_dit", "vace", "lora", "other", "unknown")
WAN_LORA_TARGETS = ("self_attn", "cross_attn", "ffn")


def checkpoint_kind(path: str) -> tuple:
    """What a weight file holds, from a .safetensors header alone: (kind, reason).

    kind: "dit" (a Wan2.1 DiT), "vace_dit" (a DiT with VACE blocks: a base model, and a VACE module source),
    "vace" (VACE blocks only), "lora" (a LoRA for Wan blocks), "other" (something else, named in the reason)
    or "unknown" (not cheaply readable: .pth/.pt/.ckpt/.bin pickles, shards of a split model, bad headers).
    """
    name = os.path.basename(path)
    if not path.lower().endswith(SAFETENSORS_SUFFIXES):
        return "unknown", f"{name}: a PyTorch pickle, whose contents are only known once it is loaded"
    if SHARD.search(name):
        return "unknown", f"{name}: one shard of a split model"
    try:
        keys = dict.fromkeys(safetensors_keys(path))
    except CheckpointError as error:
        return "unknown", str(error)
    keys = _strip_prefixes(keys)
    if any(k.startswith("condition_embedder.") or ".attn1." in k for k in keys):
        keys = _from_diffusers(keys)
    kind = describe_state_dict(keys)
    if kind == "a LoRA":
        wan = any(target in k for k in keys for target in WAN_LORA_TARGETS)
        return ("lora", kind) if wan else ("other", "a LoRA for another model (no Wan block names)")
    if "head.modulation" in keys:
        return ("vace_dit" if "vace_patch_embedding.weight" in keys else "dit"), kind
    if keys and all(k.startswith("vace_") for k in keys):
        return "vace", kind
    return "other", kind


def read_wan_state_dict(path: str, use_ema: bool = True) -> dict:
    """A prefix-free state dict in original Wan naming from a file, a sharded folder or a diffusers folder."""
    if SHARD.search(os.path.basename(path)):  # one shard picked from a folder: the model is the whole folder
        path = os.path.dirname(path) or "."
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.safetensors")) or glob.glob(os.path.join(path, "*.pth")))
        if not files:
            raise CheckpointError(f"{path}: the folder holds no .safetensors or .pth weight files.")
        sd = {}
        for file in files:
            sd.update(_unwrap(read_checkpoint(file), file, use_ema))
    else:
        sd = _unwrap(read_checkpoint(path), path, use_ema)
    sd = _strip_prefixes(sd)
    if any(k.startswith("condition_embedder.") or ".attn1." in k for k in sd):
        sd = _from_diffusers(sd)
    return sd


def _to_dtype(sd, dtype):
    out = {}
    for key, value in sd.items():
        if key.endswith((".scale_weight", ".scale_input")) or key == "scaled_fp8":
            continue
        value = value.to(torch.float32 if value.dtype in FP8_DTYPES else value.dtype)
        scale = sd.get(key[:-len("weight")] + "scale_weight") if key.endswith(".weight") else None
        if scale is not None:
            value = value * scale.to(torch.float32)
        out[key] = value.to(dtype)
    return out


def merge_lora(sd: dict, lora: dict, strength: float = 1.0, source: str = "LoRA") -> int:
    """Merge W += strength * scale * up @ down into `sd` in place; returns the number of layers changed.

    Accepts PEFT (`<module>.lora_A.weight` / `lora_B`; LongLive: rank = alpha, so scale 1) and kohya
    (`lora_unet_<module_with_underscores>.lora_down.weight` / `lora_up` / `alpha`) naming.
    """
    by_flat_name = {k[:-len(".weight")].replace(".", "_"): k[:-len(".weight")] for k in sd if k.endswith(".weight")}
    pairs = {}
    for key, tensor in lora.items():
        m = re.match(r"^(.*?)\.(lora_A|lora_B|lora_down|lora_up)(?:\.default)?\.weight$", key) or \
            re.match(r"^(.*?)\.(alpha)$", key)
        if m:
            pairs.setdefault(m.group(1), {})[m.group(2)] = tensor
    if not pairs:
        raise CheckpointError(f"{source}: holds no LoRA layers (no lora_A / lora_B or lora_down / lora_up weights); "
                              f"it looks like {describe_state_dict(_strip_prefixes(lora))}. Pick a LoRA made for "
                              "Wan2.1 (models/loras), or load this file with the loader for its kind.")
    if not isinstance(strength, (int, float)) or not abs(strength) < float("inf"):
        raise CheckpointError(f"{source}: the LoRA strength must be a finite number, got {strength!r}")
    merged, unknown, updates = 0, [], {}
    for module, parts in pairs.items():
        target = module
        for prefix in ("lora_unet_", "base_model.model.", "model.diffusion_model.", "diffusion_model.", "model."):
            target = target[len(prefix):] if target.startswith(prefix) else target
        target = target if target + ".weight" in sd else by_flat_name.get(target, target)
        down = parts.get("lora_A", parts.get("lora_down"))
        up = parts.get("lora_B", parts.get("lora_up"))
        if target + ".weight" not in sd:
            unknown.append(module)
            continue
        if down is None or up is None:
            raise CheckpointError(f"{source}: layer {module} has only {'lora_B/up' if down is None else 'lora_A/down'} "
                                  "weights, not both halves; the file is incomplete. Download it again.")
        weight = sd[target + ".weight"]
        down2, up2 = down.flatten(1), up.flatten(1)
        # exact shapes, not element counts: a LoRA for another model can have as many elements by chance
        if up2.shape != (weight.shape[0], down2.shape[0]) or down2.shape[1] != weight[0].numel():
            raise CheckpointError(
                f"{source}: layer {module} does not fit the model: its up {tuple(up.shape)} x down {tuple(down.shape)} "
                f"give a {up2.shape[0]}x{down2.shape[1]} update, but the model's {target}.weight is "
                f"{tuple(weight.shape)}. The LoRA was made for another model or size (this one has width "
                f"{sd['head.modulation'].shape[-1] if 'head.modulation' in sd else '?'}); pick a LoRA for it.")
        scale = float(parts["alpha"]) / down.shape[0] if "alpha" in parts else 1.0
        delta = (up2.float() @ down2.float()).reshape(weight.shape)
        updates[target + ".weight"] = (weight.float() + strength * scale * delta).to(weight.dtype)
        merged += 1
    if unknown or not merged:
        raise CheckpointError(f"{source}: {len(unknown)} of {len(pairs)} LoRA layers match no layer of the model "
                              f"(first: {key_summary(unknown)}). Is it a LoRA for Wan2.1 of this size?")
    sd.update(updates)  # only once every layer fitted: a refused LoRA leaves the weights as they were
    return merged


def load_wan_model(path: str, *, vace_path: str = None, loras=(), dtype=torch.bfloat16, device="cpu",
                   use_ema: bool = True) -> WanDiT:
    """Build a WanDiT from a checkpoint (+ optional VACE module file, + LoRAs [(path, strength)])."""
    sd = read_wan_state_dict(path, use_ema)
    kind = describe_state_dict(sd)
    if "head.modulation" not in sd:
        hint = " Load it as the VACE module, next to a base Wan2.1 model." if kind.startswith("a Wan VACE") else ""
        raise CheckpointError(f"{path}: this looks like {kind}, not a Wan2.1 DiT (no 'head.modulation'; keys: "
                              f"{key_summary(sd)}).{hint}")
    if vace_path:
        vace = read_wan_state_dict(vace_path, use_ema)
        vace = {k: v for k, v in vace.items() if k.startswith("vace_")}
        if not vace:
            raise CheckpointError(f"{vace_path}: holds no VACE weights (no 'vace_blocks.*' keys); it looks like "
                                  f"{describe_state_dict(read_wan_state_dict(vace_path, use_ema))}.")
        base_dim, vace_dim = sd["head.modulation"].shape[-1], vace["vace_patch_embedding.weight"].shape[0] \
            if "vace_patch_embedding.weight" in vace else None
        if vace_dim is not None and vace_dim != base_dim:
            raise CheckpointError(f"{vace_path}: a VACE module of width {vace_dim}, but {path} is a model of width "
                                  f"{base_dim}: pick the VACE module made for this model size (1.3B: 1536, 14B: 5120).")
        sd.update(vace)
    if loras:  # merge into dequantised float32 weights: an fp8 weight would round the LoRA's delta away
        sd = _to_dtype(sd, torch.float32)
    for lora_path, strength in loras:
        lora = _unwrap(read_checkpoint(lora_path), lora_path)
        check_finite_weights(lora.items(), lora_path)
        merge_lora(sd, lora, strength, lora_path)
    sd = _to_dtype(sd, dtype)
    try:
        config = WanConfig.from_state_dict(sd)
    except KeyError as missing:
        raise CheckpointError(f"{path}: looks like {kind} but lacks {missing}; the file is incomplete.") from None
    with torch.device("meta"):
        model = WanDiT(config)
    try:
        result = model.load_state_dict(sd, strict=False, assign=True)
    except RuntimeError as error:  # tensors of the wrong size: parts of different models mixed in one file
        raise CheckpointError(f"{path}: looks like {kind} but some tensors do not fit the sizes read from it "
                              f"(dim {config.dim}): {str(error).splitlines()[-1].strip()}") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: looks like {kind} but does not fit the Wan2.1 layout read from it "
            f"(dim {config.dim}, {config.num_layers} blocks, {config.num_vace_blocks} VACE blocks). "
            f"Missing: {key_summary(result.missing_keys) or 'none'}. "
            f"Unexpected: {key_summary(result.unexpected_keys) or 'none'}.")
    model = model.to(device).eval().requires_grad_(False)
    bad = nonfinite_names(model.named_parameters())
    if bad:  # name the file they came from: the VACE module file when only VACE weights are bad
        raise nonfinite_error(vace_path if vace_path and all(n.startswith("vace_") for n in bad) else path, bad, dtype)
    return model
