"""The annotator nodes end to end (ComfyUI types in and out, models from the model folders, streams continued across
queued runs), the learned line model's key layout, and the `annotate` command line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from streamvace.annotators.line_model import LineDrawingNet, load_line_model
from streamvace.annotators.scribble import ScribbleAnnotator
from streamvace.annotators.video_io import read_video_chunks, sample_clip
from streamvace.models.checkpoint_io import CheckpointError
from streamvace.nodes import NODE_CLASS_MAPPINGS as NODES
from streamvace.nodes.streams import registry
from tiny_annotator_models import randomize, save, tiny_depth_anything, tiny_rt_detr, tiny_sam2_video, tiny_vitpose

DATA = os.path.join(os.path.dirname(__file__), "data")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy_models")
    save(tiny_depth_anything(), root / "depthanything" / "tiny-depth")
    save(tiny_vitpose(), root / "vitpose" / "tiny-vitpose")
    save(tiny_rt_detr(), root / "detection" / "tiny-rtdetr")
    save(tiny_sam2_video(), root / "sam2" / "tiny-sam2")
    os.makedirs(root / "scribble")
    torch.save(randomize(LineDrawingNet(width=8), 3).state_dict(), root / "scribble" / "netG_A_tiny.pth")
    return root


@pytest.fixture(autouse=True)
def use_models_dir(models_dir, monkeypatch):
    monkeypatch.setenv("STREAMVACE_MODELS_DIR", str(models_dir))


def comfy_image(frames=6, height=48, width=64, seed=0):
    """A ComfyUI IMAGE batch [T, H, W, 3] in [0, 1]: the moving square."""
    clip = sample_clip(frames, height, width, square=16, speed=2, seed=seed)
    return ((clip + 1) / 2).permute(1, 2, 3, 0).contiguous()


def run(name, **inputs):
    node = NODES[name]()
    return getattr(node, node.FUNCTION)(**inputs)


def test_model_combos_list_the_model_folders():
    assert NODES["StreamVACEDepth"].INPUT_TYPES()["required"]["model"][0] == ["tiny-depth"]
    assert NODES["StreamVACEPose"].INPUT_TYPES()["required"]["detector"][0] == ["tiny-rtdetr"]
    assert NODES["StreamVACESAM2"].INPUT_TYPES()["required"]["model"][0] == ["tiny-sam2"]
    assert NODES["StreamVACEScribble"].INPUT_TYPES()["optional"]["line_model"][0] == ["netG_A_tiny.pth"]


def _layout_file(path, names):
    """A .safetensors file with these tensor names (tiny tensors: the combos read only the header)."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({name: torch.zeros(1) for name in names}, str(path))


def _config_folder(path, model_type):
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as handle:
        json.dump({"model_type": model_type}, handle)


def test_model_combos_offer_only_what_looks_like_each_annotators_model(tmp_path, monkeypatch):
    with open(os.path.join(DATA, "depth_anything_v2_vits_keys.json")) as handle:
        depth_keys = list(json.load(handle)["shapes"])
    with open(os.path.join(DATA, "sam2_original_keys.json")) as handle:
        sam2_keys = list(json.load(handle)["models"]["sam2.1_hiera_t"])
    with open(os.path.join(DATA, "vace_scribble_net_keys.json")) as handle:
        line_keys = list(json.load(handle)["shapes"])
    raft_keys = ["feature_encoder.convnormrelu.0.weight", "context_encoder.convnormrelu.0.weight",
                 "update_block.motion_encoder.convcorr1.0.weight", "update_block.flow_head.conv1.weight"]
    for folder in ("depthanything", "sam2", "scribble", "raft"):
        _layout_file(tmp_path / folder / "depth_anything_v2_vits.safetensors", depth_keys)
        _layout_file(tmp_path / folder / "sam2.1_hiera_tiny.safetensors", sam2_keys)
        _layout_file(tmp_path / folder / "netG_A_latest.safetensors", ["module." + k for k in line_keys])
        _layout_file(tmp_path / folder / "raft_small.safetensors", raft_keys)
        _layout_file(tmp_path / folder / "controlnet.safetensors", ["input_blocks.0.0.weight"])
        torch.save({}, tmp_path / folder / "pickled.pth")  # a pickle: only loading tells, so it is offered
    for folder in ("depthanything", "vitpose", "detection", "sam2"):
        _config_folder(tmp_path / folder / "hf-depth", "depth_anything")
        _config_folder(tmp_path / folder / "hf-vitpose", "vitpose")
        _config_folder(tmp_path / folder / "hf-rtdetr", "rt_detr_v2")
        _config_folder(tmp_path / folder / "hf-sam2", "sam2_video")
        _config_folder(tmp_path / folder / "hf-bert", "bert")
    monkeypatch.setenv("STREAMVACE_MODELS_DIR", str(tmp_path))
    required = lambda name: NODES[name].INPUT_TYPES()["required"]  # noqa: E731
    assert required("StreamVACEDepth")["model"][0] == ["depth_anything_v2_vits.safetensors", "hf-depth", "pickled.pth"]
    assert required("StreamVACEPose")["pose_model"][0] == ["hf-vitpose"]
    assert required("StreamVACEPose")["detector"][0] == ["hf-rtdetr"]
    assert required("StreamVACESAM2")["model"][0] == ["hf-sam2", "pickled.pth", "sam2.1_hiera_tiny.safetensors"]
    assert NODES["StreamVACEScribble"].INPUT_TYPES()["optional"]["line_model"][0] == ["netG_A_latest.safetensors",
                                                                                      "pickled.pth"]
    assert NODES["StreamVACEFlow"].INPUT_TYPES()["optional"]["raft_model"][0] == ["pickled.pth",
                                                                                    "raft_small.safetensors"]
    assert "not listed" in required("StreamVACEDepth")["model"][1]["tooltip"]


def test_streaming_nodes_rerun_every_queue():
    for name in ("StreamVACEDepth", "StreamVACEFlow", "StreamVACELayout", "StreamVACESAM2", "StreamVACEBoxMask"):
        value = NODES[name].IS_CHANGED()
        assert value != value, name  # NaN


def test_depth_node_continues_its_stream_across_queued_runs():
    image = comfy_image(8)
    inputs = dict(model="tiny-depth", normalize="running", resolution=70, stream_id="depth-test")
    (first,) = run("StreamVACEDepth", image=image[:4], reset=True, **inputs)
    state = registry("depth").get("depth-test")
    assert first.shape == (4, 48, 64, 3) and 0 <= first.min() and first.max() <= 1
    run("StreamVACEDepth", image=image[4:], reset=False, **inputs)
    assert registry("depth").get("depth-test") is state  # same stream, range carried
    run("StreamVACEDepth", image=image[4:], reset=True, **inputs)
    assert registry("depth").get("depth-test") is not state


def test_flow_node_queued_chunks_equal_one_run():
    image = comfy_image(10)
    inputs = dict(method="farneback", max_flow=0.0, stream_id="flow-test")
    (whole,) = run("StreamVACEFlow", image=image, reset=True, **inputs)
    (a,) = run("StreamVACEFlow", image=image[:6], reset=True, **inputs)
    (b,) = run("StreamVACEFlow", image=image[6:], reset=False, **inputs)
    assert torch.equal(torch.cat([a, b]), whole)


def test_pose_gray_and_scribble_nodes_give_images():
    image = comfy_image(3)
    (pose,) = run("StreamVACEPose", image=image, pose_model="tiny-vitpose", detector="tiny-rtdetr", max_people=4,
                  detection_threshold=0.0, draw_face=True, color_order="vace")
    (gray,) = run("StreamVACEGray", image=image, vace_channel_order=True)
    (lines,) = run("StreamVACEScribble", image=image, method="model", xdog_threshold=32.0, canny_low=100,
                   canny_high=200, invert=False, line_model="netG_A_tiny.pth")
    (xdog,) = run("StreamVACEScribble", image=image, method="xdog", xdog_threshold=32.0, canny_low=100,
                  canny_high=200, invert=False)
    for out in (pose, gray, lines, xdog):
        assert out.shape == (3, 48, 64, 3) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1


def test_layout_and_mask_nodes_continue_and_convert():
    layout = '{"boxes": [[4, 4, 20, 20], [40, 20, 60, 44]]}'
    inputs = dict(layout=layout, width=64, height=48, total_frames=6, box_size=8, stream_id="layout-test")
    (whole,) = run("StreamVACELayout", frames=6, thickness=2.0, reset=True, **inputs)
    (a,) = run("StreamVACELayout", frames=4, thickness=2.0, reset=True, **inputs)
    (b,) = run("StreamVACELayout", frames=2, thickness=2.0, reset=False, **inputs)
    assert whole.shape == (6, 48, 64, 3) and torch.equal(torch.cat([a, b]), whole)
    (masks,) = run("StreamVACEBoxMask", frames=6, reset=True, **inputs)
    assert masks.shape == (6, 48, 64) and masks[0, 10, 10] == 1 and masks[0, 30, 50] == 0
    (outlines,) = run("StreamVACEMaskLayout", masks=masks, thickness=3)
    assert outlines.shape == (6, 48, 64, 3) and outlines[0, 4, 10].max() == 0 and outlines[0, 30, 50].min() == 1
    (grown,) = run("StreamVACEMaskAdjust", masks=masks[:1], grow=2, blur=0.0, invert=True, frames=4)
    assert grown.shape == (4, 48, 64) and grown[0, 10, 10] == 0 and grown[0, 40, 2] == 1


def test_sam2_node_tracks_through_queued_runs():
    image = comfy_image(6)
    inputs = dict(model="tiny-sam2", positive_points='[{"x": 20, "y": 24}]', negative_points="", boxes="",
                  mask_threshold=0.0, stream_id="sam2-test")
    (first,) = run("StreamVACESAM2", image=image[:3], reset=True, **inputs)
    (second,) = run("StreamVACESAM2", image=image[3:], reset=False, **inputs)
    assert first.shape == second.shape == (3, 48, 64)
    assert registry("sam2").get("sam2-test").next_frame == 6


def test_bad_inputs_get_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="no frames"):
        run("StreamVACEGray", image=torch.zeros(0, 8, 8, 3), vace_channel_order=True)
    with pytest.raises(ValueError, match=r"\[frames, height, width, 3\]"):
        run("StreamVACEGray", image=torch.zeros(2, 8, 8, 2), vace_channel_order=True)
    monkeypatch.setenv("STREAMVACE_MODELS_DIR", str(tmp_path))
    assert NODES["StreamVACEDepth"].INPUT_TYPES()["required"]["model"][0] == []
    with pytest.raises(FileNotFoundError, match="No model in the 'depthanything' model folder"):
        run("StreamVACEDepth", image=comfy_image(2), model="", normalize="frame", resolution=70,
            stream_id="x", reset=True)
    with pytest.raises(FileNotFoundError, match="not found in the 'sam2' model folder"):
        run("StreamVACESAM2", image=comfy_image(2), model="gone", positive_points="[[1, 1]]", negative_points="",
            boxes="", mask_threshold=0.0, stream_id="x", reset=True)
    with pytest.raises(FileNotFoundError, match="No model in the 'scribble' model folder"):
        run("StreamVACEScribble", image=comfy_image(2), method="model", xdog_threshold=32.0, canny_low=100,
            canny_high=200, invert=False, line_model=None)


def test_models_run_in_bfloat16_as_on_a_gpu(models_dir):
    from streamvace.annotators.depth import DepthAnnotator, load_depth_model
    from streamvace.annotators.pose import PoseAnnotator, load_person_detector, load_pose_model
    from streamvace.annotators.sam2_video import Sam2VideoAnnotator, load_sam2_video_model

    bf16, video = torch.bfloat16, sample_clip(2, 48, 64, square=16)
    folder = str(models_dir)
    streaming = [DepthAnnotator(load_depth_model(f"{folder}/depthanything/tiny-depth", dtype=bf16), 70),
                 Sam2VideoAnnotator(load_sam2_video_model(f"{folder}/sam2/tiny-sam2", dtype=bf16), [[(20, 24)]])]
    per_frame = [PoseAnnotator(load_pose_model(f"{folder}/vitpose/tiny-vitpose", dtype=bf16),
                               load_person_detector(f"{folder}/detection/tiny-rtdetr", dtype=bf16), 4, 0.0),
                 ScribbleAnnotator("model", line_model=load_line_model(f"{folder}/scribble/netG_A_tiny.pth").to(bf16))]
    for annotator in streaming + per_frame:
        for _ in range(2 if annotator in streaming else 1):  # a second chunk runs the streaming path
            out = annotator(video)
        assert out.dtype == torch.float32 and torch.isfinite(out).all() and out.shape[1:] == video.shape[1:]


def test_line_model_reads_vaces_scribble_key_layout(tmp_path):
    with open(os.path.join(DATA, "vace_scribble_net_keys.json")) as handle:
        shapes = json.load(handle)["shapes"]
    generator = torch.Generator().manual_seed(0)
    torch.save({k: torch.randn(shape, generator=generator) * 0.05 for k, shape in shapes.items()},
               tmp_path / "netG_A_latest.pth")
    net = load_line_model(str(tmp_path / "netG_A_latest.pth"))
    assert set(net.state_dict()) == set(shapes) and len(net.model2) == 3
    video = sample_clip(2, 30, 42, square=12)
    out = ScribbleAnnotator("model", line_model=net)(video)
    assert out.shape == video.shape and out.min() >= -1 and out.max() <= 1  # odd sizes are padded and cropped back
    torch.save({"model0.1.weight": torch.zeros(1)}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="not a line-drawing generator"):
        load_line_model(str(tmp_path / "partial.pth"))


def test_cli_annotates_the_sample_clip_with_every_weight_free_kind(tmp_path):
    from streamvace.cli import main

    command = [sys.executable, "-m", "streamvace", "annotate", "--kind", "scribble", "--input", "sample", "--out",
               str(tmp_path / "scribble.mp4"), "--frames", "24", "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert result.returncode == 0 and "24 frames" in result.stdout, result.stderr
    for kind in ("gray", "flow", "layout"):
        assert main(["annotate", "--kind", kind, "--input", "sample", "--out", str(tmp_path / f"{kind}.mp4"),
                     "--frames", "24", "--device", "cpu"]) == 0
    for kind in ("scribble", "gray", "flow", "layout"):
        chunks = list(read_video_chunks(str(tmp_path / f"{kind}.mp4"), 12))
        assert sum(c.shape[1] for c, _ in chunks) == 24 and chunks[0][0].shape[-2:] == (240, 416)
    assert main(["annotate", "--kind", "depth", "--input", "sample", "--out", str(tmp_path / "d.mp4")]) == 2


def test_cli_depth_from_a_model_folder_and_a_video_file(tmp_path, models_dir):
    from streamvace.cli import main

    assert main(["sample-clip", "--out", str(tmp_path / "in.mp4"), "--frames", "6", "--height", "48",
                 "--width", "64"]) == 0
    assert main(["annotate", "--kind", "depth", "--input", str(tmp_path / "in.mp4"), "--out", str(tmp_path / "d.mp4"),
                 "--model", str(models_dir / "depthanything" / "tiny-depth"), "--chunk", "4", "--device", "cpu"]) == 0
    frames = torch.cat([c for c, _ in read_video_chunks(str(tmp_path / "d.mp4"))], dim=1)
    assert frames.shape == (3, 6, 48, 64)
    spread = frames[0].flatten(1)
    assert np.all((spread.max(1).values - spread.min(1).values).numpy() > 0.5)  # a full grey range per frame


def test_cli_annotate_streams_its_input(tmp_path, monkeypatch):
    """annotate reads one chunk ahead at most: the reader never runs ahead of what is written."""
    from streamvace.annotators import video_io
    from streamvace.cli import main

    assert main(["sample-clip", "--out", str(tmp_path / "in.mp4"), "--frames", "40", "--height", "32",
                 "--width", "48"]) == 0
    read, written, real_read = [], [], video_io.read_video_chunks

    def counting(*args, **kwargs):
        for item in real_read(*args, **kwargs):
            read.append(item[0].shape[1])
            yield item

    real_write = video_io.VideoWriter.write
    monkeypatch.setattr(video_io, "read_video_chunks", counting)
    monkeypatch.setattr(video_io.VideoWriter, "write", lambda self, chunk: (written.append(len(read)),
                                                                            real_write(self, chunk)))
    assert main(["annotate", "--kind", "layout", "--input", str(tmp_path / "in.mp4"), "--out", str(tmp_path / "l.mp4"),
                 "--chunk", "8", "--device", "cpu"]) == 0
    assert read == [8] * 5 and written == [1, 2, 3, 4, 5]  # chunk k is written when k chunks were read
