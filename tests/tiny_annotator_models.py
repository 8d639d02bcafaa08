"""Tiny random transformers models in the real layouts of the annotators' models, saved with save_pretrained.

Weights are re-randomised (normal, per tensor) so outputs are not near-constant the way a fresh init is.
"""

import torch


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """Re-draw every floating parameter: norms around 1, everything else N(0, std)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not parameter.is_floating_point():
                continue
            noise = torch.randn(parameter.shape, generator=generator) * std
            is_norm_scale = name.endswith("weight") and parameter.ndim == 1 and "norm" in name.lower()
            parameter.copy_(1.0 + noise * 0.1 if is_norm_scale else noise)
    return model.eval()


def tiny_depth_anything(seed: int = 0):
    """A tiny DepthAnythingForDepthEstimation shaped like V2-Small: 12 DINOv2 layers tapped at [3, 6, 9, 12], 64-wide
    heads (so the original-checkpoint converter sizes it from its tensors), hidden 64, 70-px position grid."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(hidden_size=64, num_hidden_layers=12, num_attention_heads=1, mlp_ratio=2, image_size=70,
                            patch_size=14, out_indices=[3, 6, 9, 12], apply_layernorm=True,
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=64, patch_size=14,
                                 neck_hidden_sizes=[8, 16, 32, 64], fusion_hidden_size=16, head_hidden_size=8)
    model = randomize(DepthAnythingForDepthEstimation(config), seed, std=0.2)
    with torch.no_grad():
        model.head.conv3.weight.mul_(0.1)  # keep the depth map above the final ReLU, still varying
        model.head.conv3.bias.fill_(20.0)
    return model


def tiny_vitpose(seed: int = 0, keypoints: int = 17):
    """A tiny VitPoseForPoseEstimation: 64x48 crops, 2 layers, hidden 32, `keypoints` heatmaps."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation

    backbone = VitPoseBackboneConfig(image_size=[64, 48], patch_size=[16, 16], hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, out_indices=[2])
    config = VitPoseConfig(backbone_config=backbone, num_labels=keypoints)
    return randomize(VitPoseForPoseEstimation(config), seed, std=0.2)


def tiny_rt_detr(seed: int = 0):
    """A tiny RTDetrForObjectDetection with labels person / car / dog."""
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrResNetConfig

    backbone = RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                  layer_type="basic", out_features=["stage2", "stage3", "stage4"])
    labels = {0: "person", 1: "car", 2: "dog"}
    config = RTDetrConfig(
        backbone_config=backbone, encoder_in_channels=[16, 24, 32], decoder_in_channels=[32, 32, 32],
        feat_strides=[8, 16, 32], d_model=32, encoder_hidden_dim=32, encoder_layers=1, decoder_layers=1,
        num_queries=12, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2,
        num_feature_levels=3, decoder_n_points=2, id2label=labels, label2id={v: k for k, v in labels.items()})
    model = randomize(RTDetrForObjectDetection(config), seed, std=0.1)
    with torch.no_grad():  # small box deltas keep boxes near their anchors instead of saturating the sigmoid
        for name, parameter in model.named_parameters():
            if "bbox" in name and ".layers.2." in name:
                parameter.mul_(0.05)
            if name.startswith("model.enc_output.") and name.endswith("bias"):
                parameter.zero_()  # positions outside the anchor grid then score at the median, not at the top
    return model


def tiny_sam2_video(seed: int = 0, num_maskmem: int = 4, max_object_pointers: int = 4):
    """A tiny Sam2VideoModel: 128-px input, 4-stage Hiera (16..128 wide), 1 memory-attention layer, 32x32 masks.

    The memory window is shortened (num_maskmem 4, 4 object pointers: frame t reads frames t-3..t-1) so pruning
    matters within a few frames, and the weights are scaled so that the masks depend on that memory.
    Hidden sizes are 128 and the memory 64 wide: transformers hard-codes 64-channel memories and needs the
    hidden size to be a multiple of them.
    """
    from transformers import Sam2VideoConfig, Sam2VideoModel
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig
    from transformers.models.sam2_video.configuration_sam2_video import (Sam2VideoMaskDecoderConfig,
                                                                         Sam2VideoPromptEncoderConfig)

    hiera = Sam2HieraDetConfig(hidden_size=16, num_attention_heads=1, image_size=[128, 128],
                               embed_dim_per_stage=[16, 32, 64, 128], num_attention_heads_per_stage=[1, 1, 2, 2],
                               blocks_per_stage=[1, 1, 2, 1], global_attention_blocks=[3],
                               window_size_per_stage=[4] * 4,
                               window_positional_embedding_background_size=[4, 4])
    vision = Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[128, 64, 32, 16],
                              backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]], fpn_hidden_size=128)
    config = Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config=Sam2VideoPromptEncoderConfig(hidden_size=128, image_size=128, patch_size=16,
                                                           mask_input_channels=4),
        mask_decoder_config=Sam2VideoMaskDecoderConfig(hidden_size=128, mlp_dim=64, num_attention_heads=2,
                                                       num_hidden_layers=1, iou_head_hidden_dim=32),
        image_size=128, num_maskmem=num_maskmem, max_object_pointers_in_encoder=max_object_pointers,
        memory_attention_hidden_size=128, memory_attention_num_layers=1, memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[8, 8], memory_encoder_hidden_size=128, memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=128, memory_fuser_embed_dim=128, memory_fuser_intermediate_dim=64,
        memory_fuser_num_layers=1)
    torch.manual_seed(seed)
    model = Sam2VideoModel(config).eval()
    with torch.no_grad():  # the memory path starts at zero in a fresh init; make it matter
        for name in ("memory_temporal_positional_encoding", "no_memory_embedding", "no_object_pointer",
                     "occlusion_spatial_embedding_parameter"):
            getattr(model, name).normal_(0, 0.5)
        # random weights score every tracked frame "no object" (masks pinned at -1024, memory never read): make the
        # objects appear, so later masks come from memory attention over the stored frames; damp the current
        # frame's high-resolution skip features (they swamp the memory-conditioned embedding) and scale the
        # mask logits to O(1)
        model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(10.0)
        for name, param in model.mask_decoder.named_parameters():
            if name.startswith("conv_s"):
                param.mul_(0.01)
            elif name.startswith("output_hypernetworks_mlps") and ".proj_out." in name:
                param.mul_(1000.0)
    return model


def save(model, folder) -> str:
    """save_pretrained into `folder`; returns its path as a string."""
    model.save_pretrained(str(folder))
    return str(folder)
