"""Original Depth Anything V2 weight files (depth_anything_v2_vit{s,b,l}.pth, or kijai's .safetensors of them)
converted to transformers' DepthAnythingForDepthEstimation: config from the tensor shapes, keys renamed.

The key map follows transformers' convert_depth_anything_to_hf.py (DINOv2 `pretrained.*` -> `backbone.*`, the DPT
head `depth_head.*` -> `neck.*` / `head.*`, fused qkv split into query/key/value). Layers tapped by the head:
V2 uses blocks [2, 5, 8, 11] for 12-layer encoders and [4, 11, 17, 23] for 24-layer ones (out_indices + 1).
"""

import re

import torch

from ..models.checkpoint_io import CheckpointError
from .weights import load_converted, original_state

OUT_INDICES = {12: [3, 6, 9, 12], 24: [5, 12, 18, 24]}
_REFINENET_TO_FUSION = {1: 3, 2: 2, 3: 1, 4: 0}


def _rename(key: str, modern: bool = True):
    """Original key -> transformers key (None for the fused qkv, which is split separately).

    modern: transformers >= 5 names DINOv2 attention q_proj / k_proj / v_proj / o_proj; older versions
    attention.attention.query / key / value and attention.output.dense.
    """
    fixed = {
        "pretrained.cls_token": "backbone.embeddings.cls_token",
        "pretrained.mask_token": "backbone.embeddings.mask_token",
        "pretrained.pos_embed": "backbone.embeddings.position_embeddings",
        "pretrained.patch_embed.proj.weight": "backbone.embeddings.patch_embeddings.projection.weight",
        "pretrained.patch_embed.proj.bias": "backbone.embeddings.patch_embeddings.projection.bias",
        "pretrained.norm.weight": "backbone.layernorm.weight",
        "pretrained.norm.bias": "backbone.layernorm.bias",
        "depth_head.scratch.output_conv1.weight": "head.conv1.weight",
        "depth_head.scratch.output_conv1.bias": "head.conv1.bias",
        "depth_head.scratch.output_conv2.0.weight": "head.conv2.weight",
        "depth_head.scratch.output_conv2.0.bias": "head.conv2.bias",
        "depth_head.scratch.output_conv2.2.weight": "head.conv3.weight",
        "depth_head.scratch.output_conv2.2.bias": "head.conv3.bias",
    }
    if key in fixed:
        return fixed[key]
    if m := re.fullmatch(r"pretrained\.blocks\.(\d+)\.(.+)", key):
        block, rest = m.groups()
        if rest.startswith("attn.qkv."):
            return None
        output = "attention.o_proj" if modern else "attention.output.dense"
        rest = {"ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1",
                "attn.proj.weight": f"{output}.weight", "attn.proj.bias": f"{output}.bias"}.get(rest, rest)
        return f"backbone.encoder.layer.{block}.{rest}"
    if m := re.fullmatch(r"depth_head\.projects\.(\d)\.(weight|bias)", key):
        return f"neck.reassemble_stage.layers.{m[1]}.projection.{m[2]}"
    if m := re.fullmatch(r"depth_head\.resize_layers\.(\d)\.(weight|bias)", key):
        return f"neck.reassemble_stage.layers.{m[1]}.resize.{m[2]}"
    if m := re.fullmatch(r"depth_head\.scratch\.layer(\d)_rn\.weight", key):
        return f"neck.convs.{int(m[1]) - 1}.weight"
    if m := re.fullmatch(r"depth_head\.scratch\.refinenet(\d)\.(.+)", key):
        stage, rest = _REFINENET_TO_FUSION[int(m[1])], m[2]
        rest = re.sub(r"resConfUnit(\d)\.conv(\d)", r"residual_layer\1.convolution\2", rest)
        rest = rest.replace("out_conv.", "projection.")
        return f"neck.fusion_stage.layers.{stage}.{rest}"
    raise CheckpointError(f"unexpected key {key!r} in a Depth Anything V2 checkpoint")


def depth_anything_config_from_state(state: dict):
    """A DepthAnythingConfig sized from an original checkpoint's tensors."""
    from transformers import DepthAnythingConfig, Dinov2Config

    hidden = state["pretrained.cls_token"].shape[-1]
    layers = len({int(m[1]) for k in state if (m := re.match(r"pretrained\.blocks\.(\d+)\.", k))})
    if layers not in OUT_INDICES or "pretrained.blocks.0.mlp.w12.weight" in state:
        raise CheckpointError(f"a Depth Anything V2 encoder with {layers} blocks (hidden {hidden}) is not supported; "
                              "use the Small, Base or Large checkpoint (vits / vitb / vitl)")
    patch = state["pretrained.patch_embed.proj.weight"].shape[-1]
    positions = state["pretrained.pos_embed"].shape[1] - 1
    backbone = Dinov2Config(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
        mlp_ratio=state["pretrained.blocks.0.mlp.fc1.weight"].shape[0] // hidden,
        image_size=int(round(positions ** 0.5)) * patch, patch_size=patch, out_indices=OUT_INDICES[layers],
        apply_layernorm=True, reshape_hidden_states=False)
    return DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=hidden, patch_size=patch,
        neck_hidden_sizes=[state[f"depth_head.projects.{i}.weight"].shape[0] for i in range(4)],
        fusion_hidden_size=state["depth_head.scratch.layer1_rn.weight"].shape[0],
        head_hidden_size=state["depth_head.scratch.output_conv2.0.weight"].shape[0],
        depth_estimation_type="relative")


def convert_depth_anything_state(state: dict, modern: bool = True) -> dict:
    """Original Depth Anything V2 state dict -> transformers state dict (see _rename for `modern`)."""
    converted = {}
    names = ("q_proj", "k_proj", "v_proj") if modern else ("attention.query", "attention.key", "attention.value")
    for key, value in state.items():
        if m := re.fullmatch(r"pretrained\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)", key):
            for name, part in zip(names, value.chunk(3, dim=0)):
                converted[f"backbone.encoder.layer.{m[1]}.attention.{name}.{m[2]}"] = part
        else:
            converted[_rename(key, modern)] = value
    return converted


def load_original_depth_anything(path: str):
    """A DepthAnythingForDepthEstimation (float32, CPU, eval) from an original V2 .pth / .safetensors file."""
    from transformers import DepthAnythingForDepthEstimation

    state = original_state(
        path, "pretrained.cls_token",
        "not a Depth Anything V2 checkpoint (expected keys pretrained.* and depth_head.* as in "
        "depth_anything_v2_vits.pth); found {found}. Use depth_anything_v2_vit{{s,b,l}}.pth or a "
        "transformers folder such as depth-anything/Depth-Anything-V2-Small-hf.")
    try:
        config = depth_anything_config_from_state(state)
        with torch.device("meta"):
            model = DepthAnythingForDepthEstimation(config)
        modern = any(".attention.q_proj." in key for key in model.state_dict())
        converted = convert_depth_anything_state(state, modern)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from error
    return load_converted(model, converted, path, "Depth Anything V2", assign=True)
