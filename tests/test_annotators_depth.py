"""Depth Anything V2: tiny random models saved with save_pretrained (and as an original-format .pth) load through our
loaders; pre/post-processing matches transformers' DPT processor; VACE's depth-frame format; streaming range."""

import json
import os
import re

import numpy as np
import pytest
import torch

from streamvace.annotators.depth import DepthAnnotator, load_depth_model, network_size
from streamvace.annotators.depth_checkpoint import convert_depth_anything_state, depth_anything_config_from_state
from streamvace.annotators.video_io import sample_clip
from streamvace.models.checkpoint_io import CheckpointError
from tiny_annotator_models import save, tiny_depth_anything, tiny_vitpose

DATA = os.path.join(os.path.dirname(__file__), "data")
RESOLUTION = 70  # the tiny model's position grid is 5x5 patches of 14 px


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save(tiny_depth_anything(), tmp_path_factory.mktemp("depthanything") / "tiny-depth-anything")


@pytest.fixture(scope="module")
def model(model_folder):
    return load_depth_model(model_folder)


@pytest.fixture(scope="module")
def clip():
    return sample_clip(frames=6, height=60, width=100, square=24, speed=3)


def test_loader_reads_the_saved_folder_with_all_weights(model_folder, model):
    reference = tiny_depth_anything()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_network_size_matches_transformers_dpt_processor():
    from transformers import DPTImageProcessorPil

    processor = DPTImageProcessorPil(size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14)
    for height, width in ((480, 832), (368, 640), (1080, 1920), (518, 518), (300, 200)):
        image = np.zeros((height, width, 3), np.uint8)
        expected = processor(image, return_tensors="pt").pixel_values.shape[-2:]
        assert network_size(height, width) == tuple(expected), (height, width)


def test_pre_and_post_processing_match_the_transformers_processor(model, clip):
    from transformers import DPTImageProcessorPil

    processor = DPTImageProcessorPil(size={"height": RESOLUTION, "width": RESOLUTION}, keep_aspect_ratio=True,
                                     ensure_multiple_of=14, image_mean=[0.485, 0.456, 0.406],
                                     image_std=[0.229, 0.224, 0.225])  # Depth-Anything-V2-*-hf preprocessor_config
    frames = ((clip.transpose(0, 1) + 1) * 127.5).round().to(torch.uint8)
    inputs = processor([f for f in frames.numpy()], return_tensors="pt")
    annotator = DepthAnnotator(model, resolution=RESOLUTION)
    ours = annotator.pixel_values(frames.float() / 255)
    assert ours.shape == inputs.pixel_values.shape
    difference = (ours - inputs.pixel_values).abs()
    assert difference.mean() < 0.01 and difference.max() < 0.15  # PIL resizes uint8 images, we resize floats
    with torch.no_grad():
        outputs = model(**inputs)
    expected = processor.post_process_depth_estimation(outputs, target_sizes=[(60, 100)] * len(frames))
    expected = torch.stack([e["predicted_depth"] for e in expected])
    assert torch.allclose(annotator.resize_depth(outputs.predicted_depth, 60, 100), expected, atol=1e-4)


def test_frames_are_vace_depth_format_and_per_frame_mode_equals_whole_clip(model, clip):
    annotator = DepthAnnotator(model, resolution=RESOLUTION, normalize="frame")
    whole = annotator(clip)
    assert whole.shape == clip.shape and whole.dtype == torch.float32
    assert torch.equal(whole[0], whole[1]) and torch.equal(whole[0], whole[2])
    assert torch.allclose(whole[0].amin(dim=(1, 2)), torch.full((6,), -1.0))
    assert torch.allclose(whole[0].amax(dim=(1, 2)), torch.full((6,), 1.0))
    raw = annotator.predict((clip.transpose(0, 1) + 1) / 2)
    assert torch.equal(whole[0, 2].flatten().argmax(), raw[2].flatten().argmax())  # near (large) = bright
    chunked = torch.cat([annotator(clip[:, :4]), annotator(clip[:, 4:])], dim=1)
    assert torch.allclose(chunked, whole, atol=1e-5)


def test_running_range_is_smoothed_across_chunks_and_only_committed_on_success(model, clip):
    annotator = DepthAnnotator(model, resolution=RESOLUTION, normalize="running", range_momentum=0.75)
    images = (clip.transpose(0, 1) + 1) / 2
    first = annotator(clip[:, :3])
    raw_first, raw_second = annotator.predict(images[:3]), annotator.predict(images[3:])
    assert torch.allclose(annotator.range, torch.stack([raw_first.min(), raw_first.max()]))
    assert first.min() == -1 and first.max() == 1
    second = annotator(clip[:, 3:])
    expected_range = 0.75 * torch.stack([raw_first.min(), raw_first.max()]) + 0.25 * torch.stack(
        [raw_second.min(), raw_second.max()])
    assert torch.allclose(annotator.range, expected_range)
    expected = ((raw_second - expected_range[0]) / (expected_range[1] - expected_range[0])).clamp(0, 1) * 2 - 1
    assert torch.allclose(second[0], expected, atol=1e-5)
    before = annotator.range.clone()
    with pytest.raises(ValueError, match="3 colour channels"):
        annotator(clip[:2])
    assert torch.equal(annotator.range, before)
    annotator.reset()
    assert annotator.range is None


def test_original_v2_key_layout_converts_onto_transformers_exactly():
    from transformers import DepthAnythingForDepthEstimation

    for name in ("vits", "vitl"):
        with open(os.path.join(DATA, f"depth_anything_v2_{name}_keys.json")) as handle:
            shapes = json.load(handle)["shapes"]
        state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
        config = depth_anything_config_from_state(state)
        with torch.device("meta"):
            reference = DepthAnythingForDepthEstimation(config).state_dict()
        converted = convert_depth_anything_state(state)
        assert set(converted) == set(reference), name
        assert all(converted[k].shape == reference[k].shape for k in reference), name
    assert config.backbone_config.out_indices == [5, 12, 18, 24] and config.fusion_hidden_size == 256


def _to_original(state: dict) -> dict:
    """transformers Depth Anything keys -> the official repository's keys (the inverse, written out separately)."""
    fusion_to_refinenet = {3: 1, 2: 2, 1: 3, 0: 4}
    original, qkv = {}, {}
    for key, value in state.items():
        if m := re.fullmatch(r"backbone\.encoder\.layer\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)", key):
            qkv.setdefault((m[1], m[3]), {})[m[2]] = value
            continue
        new = key
        for old, replacement in [
            (r"^backbone\.embeddings\.cls_token$", "pretrained.cls_token"),
            (r"^backbone\.embeddings\.mask_token$", "pretrained.mask_token"),
            (r"^backbone\.embeddings\.position_embeddings$", "pretrained.pos_embed"),
            (r"^backbone\.embeddings\.patch_embeddings\.projection\.", "pretrained.patch_embed.proj."),
            (r"^backbone\.layernorm\.", "pretrained.norm."),
            (r"^backbone\.encoder\.layer\.(\d+)\.layer_scale(\d)\.lambda1$", r"pretrained.blocks.\1.ls\2.gamma"),
            (r"^backbone\.encoder\.layer\.(\d+)\.attention\.o_proj\.", r"pretrained.blocks.\1.attn.proj."),
            (r"^backbone\.encoder\.layer\.(\d+)\.", r"pretrained.blocks.\1."),
            (r"^neck\.reassemble_stage\.layers\.(\d)\.projection\.", r"depth_head.projects.\1."),
            (r"^neck\.reassemble_stage\.layers\.(\d)\.resize\.", r"depth_head.resize_layers.\1."),
            (r"^neck\.convs\.(\d)\.weight$", lambda m: f"depth_head.scratch.layer{int(m[1]) + 1}_rn.weight"),
            (r"^head\.conv1\.", "depth_head.scratch.output_conv1."),
            (r"^head\.conv2\.", "depth_head.scratch.output_conv2.0."),
            (r"^head\.conv3\.", "depth_head.scratch.output_conv2.2."),
        ]:
            new = re.sub(old, replacement, new)
        if m := re.fullmatch(r"neck\.fusion_stage\.layers\.(\d)\.(.+)", new):
            rest = re.sub(r"residual_layer(\d)\.convolution(\d)", r"resConfUnit\1.conv\2", m[2])
            rest = rest.replace("projection.", "out_conv.")
            new = f"depth_head.scratch.refinenet{fusion_to_refinenet[int(m[1])]}.{rest}"
        original[new] = value
    for (block, kind), parts in qkv.items():
        original[f"pretrained.blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return original


def test_original_format_file_loads_through_the_same_loader(tmp_path, model, clip):
    original = _to_original(tiny_depth_anything().state_dict())
    with open(os.path.join(DATA, "depth_anything_v2_vits_keys.json")) as handle:
        real_names = {re.sub(r"\.\d+\.", ".N.", k) for k in json.load(handle)["shapes"]}
    assert {re.sub(r"\.\d+\.", ".N.", k) for k in original} == real_names  # same naming as the official files
    path = str(tmp_path / "depth_anything_v2_tiny.pth")
    torch.save(original, path)
    loaded = load_depth_model(path)
    images = (clip.transpose(0, 1) + 1) / 2
    assert torch.allclose(DepthAnnotator(loaded, RESOLUTION).predict(images),
                          DepthAnnotator(model, RESOLUTION).predict(images), atol=1e-4)


def test_missing_or_wrong_weights_get_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        os.makedirs(tmp_path / "empty")
        load_depth_model(str(tmp_path / "empty"))
    wrong_folder = save(tiny_vitpose(), tmp_path / "vitpose")
    with pytest.raises(CheckpointError, match="'vitpose' model"):
        load_depth_model(wrong_folder)
    torch.save({"something.else": torch.zeros(3)}, tmp_path / "not_depth.pth")
    with pytest.raises(CheckpointError, match="not a Depth Anything V2 checkpoint"):
        load_depth_model(str(tmp_path / "not_depth.pth"))
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_depth_model(str(tmp_path / "missing.pth"))
    broken = tmp_path / "broken"
    save(tiny_depth_anything(), broken)
    config = json.loads((broken / "config.json").read_text())
    config["fusion_hidden_size"] = 24
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="broken"):
        load_depth_model(str(broken))
