"""Original SAM2 / SAM2.1 weight files (Meta's sam2[.1]_hiera_{t,s,b+,l}.pt, or kijai's .safetensors of them)
converted to transformers' Sam2VideoModel: the size from the tensors, the keys renamed.

The renaming follows transformers' convert_sam2_video_to_hf.py (substring renames, then the MLP / mask-downsampler
index renames, then the four point embeddings fused into one table). Hiera sizes (embed dim, blocks per stage,
global-attention blocks, window sizes) are the published tiny / small / base+ / large ones, recognised by the
patch-embedding width and the block count; SAM2.1 is told from SAM2.0 by its extra occlusion / pointer keys.
"""

import re

import torch

from ..models.checkpoint_io import CheckpointError
from .weights import load_converted, original_state

# (embed dim, blocks) -> Hiera settings (facebookresearch/sam2 configs; transformers' converter get_config)
HIERA_SIZES = {
    (96, 12): dict(name="tiny", blocks_per_stage=[1, 2, 7, 2], global_attention_blocks=[5, 7, 9]),
    (96, 16): dict(name="small", blocks_per_stage=[1, 2, 11, 2], global_attention_blocks=[7, 10, 13]),
    (112, 24): dict(name="base_plus", hidden_size=112, embed_dim_per_stage=[112, 224, 448, 896],
                    num_attention_heads_per_stage=[2, 4, 8, 16], blocks_per_stage=[2, 3, 16, 3],
                    global_attention_blocks=[12, 16, 20], window_positional_embedding_background_size=[14, 14]),
    (144, 48): dict(name="large", hidden_size=144, embed_dim_per_stage=[144, 288, 576, 1152],
                    num_attention_heads_per_stage=[2, 4, 8, 16], blocks_per_stage=[2, 6, 36, 4],
                    global_attention_blocks=[23, 33, 43], window_positional_embedding_background_size=[7, 7],
                    window_size_per_stage=[8, 4, 16, 8]),
}

# applied in this order to every key, as substrings
RENAMES = (
    ("iou_prediction_head.layers.0", "iou_prediction_head.proj_in"),
    ("iou_prediction_head.layers.1", "iou_prediction_head.layers.0"),
    ("iou_prediction_head.layers.2", "iou_prediction_head.proj_out"),
    ("mask_decoder.output_upscaling.0", "mask_decoder.upscale_conv1"),
    ("mask_decoder.output_upscaling.1", "mask_decoder.upscale_layer_norm"),
    ("mask_decoder.output_upscaling.3", "mask_decoder.upscale_conv2"),
    ("mask_downscaling.0", "mask_embed.conv1"),
    ("mask_downscaling.1", "mask_embed.layer_norm1"),
    ("mask_downscaling.3", "mask_embed.conv2"),
    ("mask_downscaling.4", "mask_embed.layer_norm2"),
    ("mask_downscaling.6", "mask_embed.conv3"),
    ("dwconv", "depthwise_conv"),
    ("pwconv", "pointwise_conv"),
    ("fuser", "memory_fuser"),
    ("point_embeddings", "point_embed"),
    ("pe_layer.positional_encoding_gaussian_matrix", "shared_embedding.positional_embedding"),
    ("obj_ptr_tpos_proj", "temporal_positional_encoding_projection_layer"),
    ("no_obj_embed_spatial", "occlusion_spatial_embedding_parameter"),
    ("sam_prompt_encoder", "prompt_encoder"),
    ("sam_mask_decoder", "mask_decoder"),
    ("maskmem_tpos_enc", "memory_temporal_positional_encoding"),
    ("gamma", "scale"),
    ("image_encoder.neck", "vision_encoder.neck"),
    ("image_encoder", "vision_encoder.backbone"),
    ("neck.0", "neck.conv1"),
    ("neck.1", "neck.layer_norm1"),
    ("neck.2", "neck.conv2"),
    ("neck.3", "neck.layer_norm2"),
    ("pix_feat_proj", "feature_projection"),
    ("patch_embed.proj", "patch_embed.projection"),
    ("no_mem_embed", "no_memory_embedding"),
    ("no_mem_pos_enc", "no_memory_positional_encoding"),
    ("obj_ptr", "object_pointer"),
    (".norm", ".layer_norm"),
    ("trunk.", ""),
    ("out_proj", "o_proj"),
)
_THREE_LAYER_MLPS = (r"mask_decoder\.pred_obj_score_head\.layers\.(\d+)\.",
                     r".*output_hypernetworks_mlps\.\d+\.layers\.(\d+)\.", r"object_pointer_proj\.layers\.(\d+)\.")


def rename_sam2_key(key: str) -> str:
    """One original SAM2 key -> its transformers Sam2VideoModel name."""
    for old, new in RENAMES:
        if old in key:
            key = key.replace(old, new)
    if m := re.match(r"vision_encoder\.backbone\.blocks\.\d+\.mlp\.layers\.(\d+)", key):
        key = key.replace(f"layers.{m[1]}", "proj_in" if m[1] == "0" else "proj_out")
    if m := re.match(r"mask_decoder\.transformer\.layers\.\d+\.mlp\.layers\.(\d+)", key):
        key = key.replace(f"mlp.layers.{m[1]}", "mlp.proj_in" if m[1] == "0" else "mlp.proj_out")
    for pattern in _THREE_LAYER_MLPS:
        if m := re.match(pattern, key):
            key = key.replace(f"layers.{m[1]}", {"0": "proj_in", "1": "layers.0", "2": "proj_out"}[m[1]])
    if re.match(r"vision_encoder\.neck\.convs\.\d+\.conv", key):
        key = key.replace(".conv.", ".")
    if key.startswith("memory_encoder.o_proj"):
        key = key.replace(".o_proj.", ".projection.")
    if m := re.match(r"memory_encoder\.mask_downsampler\.encoder\.(\d+)\.", key):
        index = int(m[1])
        target = "final_conv" if index == 12 else f"layers.{index // 3}.conv" if index % 3 == 0 else \
            f"layers.{index // 3}.layer_norm"
        key = key.replace(f"encoder.{index}", target)
    return key


def convert_sam2_state(state: dict) -> dict:
    """Original SAM2 state dict -> transformers Sam2VideoModel state dict."""
    converted = {rename_sam2_key(key): value for key, value in state.items()}
    converted["shared_image_embedding.positional_embedding"] = converted[
        "prompt_encoder.shared_embedding.positional_embedding"]
    converted["prompt_encoder.point_embed.weight"] = torch.cat(
        [converted.pop(f"prompt_encoder.point_embed.{i}.weight") for i in range(4)], dim=0)
    return converted


def sam2_video_config(size: str = "tiny", version_2_1: bool = True):
    """The Sam2VideoConfig of a published SAM2 size: 'tiny', 'small', 'base_plus' or 'large'."""
    from transformers import Sam2VideoConfig
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig

    by_name = {settings["name"]: settings for settings in HIERA_SIZES.values()}
    if size not in by_name:
        raise ValueError(f"SAM2 size must be one of {sorted(by_name)}, got {size!r}")
    hiera = {k: v for k, v in by_name[size].items() if k != "name"}
    channels = hiera.get("embed_dim_per_stage", [96, 192, 384, 768])[::-1]
    return Sam2VideoConfig(
        vision_config=Sam2VisionConfig(backbone_config=Sam2HieraDetConfig(**hiera), backbone_channel_list=channels),
        enable_temporal_pos_encoding_for_object_pointers=version_2_1, enable_occlusion_spatial_embedding=version_2_1)


def sam2_config_from_state(state: dict):
    """A Sam2VideoConfig for an original checkpoint (Hiera size from its tensors, 2.0 vs 2.1 from its keys)."""
    width = state["image_encoder.trunk.patch_embed.proj.weight"].shape[0]
    blocks = len({int(m[1]) for k in state if (m := re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", k))})
    if (width, blocks) not in HIERA_SIZES:
        raise CheckpointError(f"a SAM2 image encoder of width {width} with {blocks} blocks is not one of the published "
                              "sizes (tiny, small, base_plus, large)")
    return sam2_video_config(HIERA_SIZES[(width, blocks)]["name"], version_2_1="no_obj_embed_spatial" in state)


def load_original_sam2(path: str):
    """A Sam2VideoModel (float32, CPU, eval) from an original sam2[.1]_hiera_*.pt / .safetensors file."""
    from transformers import Sam2VideoModel

    state = original_state(
        path, "image_encoder.trunk.patch_embed.proj.weight",
        "not an original SAM2 checkpoint (expected image_encoder.trunk.* keys as in sam2.1_hiera_tiny.pt); found "
        "{found}. Use Meta's sam2[.1]_hiera_*.pt, kijai's .safetensors of them, or a transformers folder such as "
        "facebook/sam2.1-hiera-tiny.")
    try:
        config = sam2_config_from_state(state)
        converted = convert_sam2_state(state)
    except (CheckpointError, KeyError) as error:
        raise CheckpointError(f"{path}: not a complete SAM2 checkpoint ({error})") from error
    return load_converted(Sam2VideoModel(config), converted, path, f"SAM2 {config.vision_config.backbone_config}")
