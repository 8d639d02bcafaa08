"""GPU benchmark of every annotator, chunk by chunk, at 480x832 (full-size random weights, bf16).

Each annotator gets `--warmup` chunks, then `--chunks` timed chunks of `--chunk-frames` frames (wall clock between
torch.cuda.synchronize calls, so CPU work such as Farnebäck or OpenCV pose drawing is included). Reported per
annotator: ms per chunk and per frame, frames per second, peak GPU memory, and whether a chunk runs without a host
sync (one chunk under torch.cuda.set_sync_debug_mode("error"); flow, Canny, SAM2 and the OpenCV pose drawing sync
by design). Targets (issue 4): every annotator >= 60 fps at 480x832 on an H100, SAM2 propagation >= 30 fps.

Inputs: the sample clip (a moving square); masks are object-like (a ring with a hole and a disc, moving, as SAM2
gives them), plus `mask_contours_noise` on salt noise (30 % of pixels) for the worst case of VACE's per-contour
drawing. Pose runs 8 people per frame with random weights (`_detect_every_3`: the detector on every third frame);
its `_keypoints_only` and `_drawing_only_*` rows split the time between the models and the drawing (8 synthetic
standing people; the torch renderer's work does not depend on the poses, OpenCV's grows with the limbs drawn).

    python benchmarks/bench_annotators.py --out DIR      # on a GPU
    python benchmarks/bench_annotators.py --smoke        # tiny models on the CPU, to check the script
    python benchmarks/bench_annotators.py --out DIR --only mask_contours,pose_vitpose_b_rtdetr_r50   # name prefixes
"""

import argparse
import datetime
import json
import os
import time

import torch

from streamvace.annotators.depth import DepthAnnotator
from streamvace.annotators.flow import FlowAnnotator
from streamvace.annotators.frames import to_images
from streamvace.annotators.gray import GrayAnnotator
from streamvace.annotators.layout import LayoutAnnotator
from streamvace.annotators.line_model import LineDrawingNet
from streamvace.annotators.mask_outline import draw_mask_contours
from streamvace.annotators.masks import adjust_masks
from streamvace.annotators.pose import PoseAnnotator
from streamvace.annotators.sam2_checkpoint import sam2_video_config
from streamvace.annotators.sam2_video import Sam2VideoAnnotator
from streamvace.annotators.scribble import ScribbleAnnotator
from streamvace.annotators.video_io import sample_clip


def depth_model(size: str, full: bool):
    """Depth Anything V2 Small / Large (full) or a tiny stand-in (smoke)."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    if not full:
        backbone = Dinov2Config(hidden_size=64, num_hidden_layers=4, num_attention_heads=1, image_size=70,
                                patch_size=14, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
        return DepthAnythingForDepthEstimation(DepthAnythingConfig(
            backbone_config=backbone, reassemble_hidden_size=64, neck_hidden_sizes=[8, 16, 32, 64],
            fusion_hidden_size=16, head_hidden_size=8))
    hidden, layers, out_indices, neck, fusion = {
        "small": (384, 12, [3, 6, 9, 12], [48, 96, 192, 384], 64),
        "large": (1024, 24, [5, 12, 18, 24], [256, 512, 1024, 1024], 256)}[size]
    backbone = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
                            image_size=518, patch_size=14, out_indices=out_indices, reshape_hidden_states=False)
    return DepthAnythingForDepthEstimation(DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=hidden, neck_hidden_sizes=neck, fusion_hidden_size=fusion))


def pose_models(full: bool):
    """ViTPose-B (usyd-community/vitpose-base-simple sizes) + RT-DETR R50 (PekingU/rtdetr_r50vd sizes)."""
    from transformers import (RTDetrConfig, RTDetrForObjectDetection, RTDetrResNetConfig, VitPoseBackboneConfig,
                              VitPoseConfig, VitPoseForPoseEstimation)

    labels = {0: "person", 1: "bicycle"}
    if full:
        pose = VitPoseForPoseEstimation(VitPoseConfig(num_labels=17))
        detector = RTDetrForObjectDetection(RTDetrConfig(num_labels=80, id2label={0: "person", **{
            i: f"class{i}" for i in range(1, 80)}}))
        return pose, detector
    pose = VitPoseForPoseEstimation(VitPoseConfig(backbone_config=VitPoseBackboneConfig(
        image_size=[64, 48], hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        out_indices=[1]), num_labels=17))
    detector = RTDetrForObjectDetection(RTDetrConfig(
        backbone_config=RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                           layer_type="basic", out_features=["stage2", "stage3", "stage4"]),
        encoder_in_channels=[16, 24, 32], decoder_in_channels=[32, 32, 32], d_model=32, encoder_hidden_dim=32,
        encoder_layers=1, decoder_layers=1, num_queries=12, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, decoder_n_points=2, id2label=labels))
    return pose, detector


def sam2_model(size: str, full: bool):
    """SAM2.1 Hiera tiny / large (the published sizes) or a tiny stand-in (smoke)."""
    from transformers import Sam2VideoConfig, Sam2VideoModel
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig
    from transformers.models.sam2_video.configuration_sam2_video import (Sam2VideoMaskDecoderConfig,
                                                                         Sam2VideoPromptEncoderConfig)

    if full:
        return Sam2VideoModel(sam2_video_config(size))
    hiera = Sam2HieraDetConfig(hidden_size=16, image_size=[128, 128], embed_dim_per_stage=[16, 32, 64, 128],
                               num_attention_heads_per_stage=[1, 1, 2, 2], blocks_per_stage=[1, 1, 2, 1],
                               global_attention_blocks=[3], window_size_per_stage=[4] * 4,
                               window_positional_embedding_background_size=[4, 4])
    return Sam2VideoModel(Sam2VideoConfig(
        vision_config=Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[128, 64, 32, 16],
                                       backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]], fpn_hidden_size=128),
        prompt_encoder_config=Sam2VideoPromptEncoderConfig(hidden_size=128, image_size=128, mask_input_channels=4),
        mask_decoder_config=Sam2VideoMaskDecoderConfig(hidden_size=128, mlp_dim=64, num_attention_heads=2,
                                                       num_hidden_layers=1, iou_head_hidden_dim=32),
        image_size=128, memory_attention_hidden_size=128, memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64, memory_attention_rope_feat_sizes=[8, 8],
        memory_encoder_hidden_size=128, mask_downsampler_embed_dim=128, memory_fuser_embed_dim=128,
        memory_fuser_intermediate_dim=64, memory_fuser_num_layers=1))


def moving_shape_masks(frames: int, height: int, width: int, device) -> torch.Tensor:
    """Object-like masks [1, T, H, W]: a ring (its hole is not outlined) and a disc, both moving, smooth edges."""
    ys = torch.arange(height, device=device, dtype=torch.float32).view(1, -1, 1)
    xs = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, -1)
    t = torch.arange(frames, device=device, dtype=torch.float32).view(-1, 1, 1)
    radius = ((xs - width * (0.3 + 0.01 * t)) / (0.2 * width)) ** 2 + ((ys - height * 0.5) / (0.35 * height)) ** 2
    disc = (xs - width * 0.75) ** 2 + (ys - height * 0.4 - 2 * t) ** 2 <= (0.12 * height) ** 2
    return (((radius <= 1) & (radius >= 0.3)) | disc).float()[None]


# a standing person in COCO-17 order, (x, y) as fractions of the person's height
STANDING_PERSON = ((0.0, 0.05), (-0.02, 0.03), (0.02, 0.03), (-0.05, 0.05), (0.05, 0.05), (-0.12, 0.2), (0.12, 0.2),
                   (-0.16, 0.35), (0.16, 0.35), (-0.18, 0.5), (0.18, 0.5), (-0.08, 0.52), (0.08, 0.52),
                   (-0.09, 0.75), (0.09, 0.75), (-0.09, 0.97), (0.09, 0.97))


def standing_people(frames: int, people: int, height: int, width: int, device) -> tuple:
    """Keypoints [T, K, 17, 2] of `people` standing people spread over the frame (0.4-0.9 of its height), scores 0.9."""
    template = torch.tensor(STANDING_PERSON, device=device)
    sizes = height * torch.linspace(0.4, 0.9, people, device=device)
    feet_x = width * (torch.arange(people, device=device) + 0.5) / people
    keypoints = template * sizes.view(-1, 1, 1) + torch.stack([feet_x, height - 1 - sizes], -1).view(-1, 1, 2)
    keypoints = keypoints.expand(frames, -1, -1, -1).contiguous()
    return keypoints, torch.full(keypoints.shape[:3], 0.9, device=device)


def prepare(model, device, dtype):
    """Random weights on the device, eval, no grad (speed does not depend on the weight values)."""
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def annotators(height, width, frames, device, dtype, full):
    """(name, callable(chunk) -> output, syncs_by_design) for every annotator."""
    masks = moving_shape_masks(frames, height, width, device)
    noise = (torch.rand(1, frames, height, width, device=device) > 0.7).float()
    pose, detector = (prepare(model, device, dtype) for model in pose_models(full))
    pose_args = dict(max_people=8, detection_threshold=0.0)
    people = standing_people(frames, 8, height, width, device)
    present = torch.ones(frames, 8, dtype=torch.bool, device=device)
    drawing = {renderer: PoseAnnotator(pose, detector, renderer=renderer, **pose_args)
               for renderer in ("torch", "opencv")}
    layout = LayoutAnnotator('[{"boxes": [[100, 100, 300, 300], [400, 200, 700, 420]]}, '
                             '[{"x": 50, "y": 60}, {"x": 700, "y": 400}]]', height, width, total_frames=81,
                             device=device)
    point = [[(width / 2, height / 2)]]
    items = [
        ("gray", GrayAnnotator(), False),
        ("scribble_xdog", ScribbleAnnotator("xdog"), False),
        ("scribble_canny", ScribbleAnnotator("canny"), True),
        ("scribble_line_model", ScribbleAnnotator("model", line_model=prepare(
            LineDrawingNet(width=64 if full else 8), device, dtype)), False),
        ("flow_farneback", FlowAnnotator(), True),
        ("layout", lambda chunk: layout(chunk.shape[1]), False),
        ("mask_adjust", lambda chunk: adjust_masks(masks, grow=8, blur=4.0, invert=True), False),
        ("mask_contours", lambda chunk: draw_mask_contours(masks), False),
        ("mask_contours_noise", lambda chunk: draw_mask_contours(noise), False),
        ("depth_small", DepthAnnotator(prepare(depth_model("small", full), device, dtype),
                                       resolution=518 if full else 70), False),
        ("pose_vitpose_b_rtdetr_r50", PoseAnnotator(pose, detector, **pose_args), False),
        ("pose_vitpose_b_rtdetr_r50_opencv_drawing", drawing["opencv"], True),
        ("pose_vitpose_b_rtdetr_r50_detect_every_3", PoseAnnotator(pose, detector, detect_every=3, **pose_args),
         False),
        ("pose_vitpose_b_rtdetr_r50_keypoints_only", lambda chunk: drawing["torch"].keypoints(to_images(chunk)),
         False),
        ("pose_vitpose_b_rtdetr_r50_drawing_only_torch",
         lambda chunk: drawing["torch"].draw(*people, present, height, width), False),
        ("pose_vitpose_b_rtdetr_r50_drawing_only_opencv",
         lambda chunk: drawing["opencv"].draw(*people, present, height, width), True),
        ("sam2_tiny_propagation", Sam2VideoAnnotator(prepare(sam2_model("tiny", full), device, dtype), point), True),
    ]
    if full:
        items += [
            ("depth_large", DepthAnnotator(prepare(depth_model("large", full), device, dtype)), False),
            ("sam2_large_propagation", Sam2VideoAnnotator(prepare(sam2_model("large", full), device, dtype), point),
             True),
        ]
    return items


def has_host_sync(function, chunk) -> bool:
    """True if one call syncs the host with the GPU (CUDA only)."""
    if chunk.device.type != "cuda":
        return False
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        function(chunk)
        return False
    except RuntimeError as error:
        if "synchroniz" not in str(error):
            raise
        return True
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()


def time_annotator(function, chunk, warmup, chunks):
    """ms per chunk (sorted) after warm-up, wall clock between synchronisations, and the peak memory."""
    cuda = chunk.device.type == "cuda"
    with torch.inference_mode():
        for _ in range(warmup):
            function(chunk)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(chunks):
            start = time.perf_counter()
            function(chunk)
            if cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1000)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0
    return sorted(times), peak


def main(argv=None) -> int:
    """Run the benchmark and write annotators.json into --out."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--smoke", action="store_true", help="tiny models, small frames, CPU")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--chunk-frames", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--only", default="", help="comma-separated annotator names (or name prefixes) to run")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    height, width, frames = (64, 96, 4) if args.smoke else (args.height, args.width, args.chunk_frames)
    warmup, chunks = (1, 2) if args.smoke else (args.warmup, args.chunks)
    torch.manual_seed(0)
    chunk = sample_clip(frames, height, width, square=min(height, width) // 4).to(device)
    results = []
    with torch.device(device):  # build the random models straight on the device
        items = annotators(height, width, frames, device, dtype, full=not args.smoke)
    for name, function, syncs_by_design in items:
        if args.only and not name.startswith(tuple(args.only.split(","))):
            continue
        with torch.inference_mode():
            function(chunk)  # first chunk (SAM2: the prompted frame) before anything is measured
            host_sync = has_host_sync(function, chunk)
        ms, peak = time_annotator(function, chunk, warmup, chunks)
        mean = sum(ms) / len(ms)
        row = {"annotator": name, "ms_per_chunk_mean": round(mean, 2), "ms_per_chunk_p50": round(ms[len(ms) // 2], 2),
               "ms_per_frame": round(mean / frames, 3), "fps": round(frames * 1000 / mean, 1),
               "peak_memory_mib": round(peak, 1), "host_sync": host_sync, "host_sync_by_design": syncs_by_design}
        results.append(row)
        print(f"{name:46s} {row['ms_per_frame']:8.3f} ms/frame {row['fps']:9.1f} fps  "
              f"peak {row['peak_memory_mib']:8.1f} MiB  host sync: {'yes' if host_sync else 'no'}"
              f"{' (by design)' if syncs_by_design else ''}")
    report = {
        "benchmark": "annotators", "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
        "cpu_threads": os.cpu_count(), "dtype": str(dtype), "height": height, "width": width,
        "chunk_frames": frames, "warmup_chunks": warmup, "timed_chunks": chunks, "smoke": args.smoke,
        "results": results}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "annotators_smoke.json" if args.smoke else "annotators.json")
    with open(path, "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
