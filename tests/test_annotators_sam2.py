"""SAM2 video masks: a tiny random Sam2VideoModel saved and reloaded through our loader; pruned, batched streaming gives
the masks of transformers' own unpruned streaming session; memory stays bounded over 500 streamed frames; a failed
chunk leaves the stream as it was."""

import json
import os

import numpy as np
import pytest
import torch

from streamvace.annotators.sam2_checkpoint import convert_sam2_state, sam2_config_from_state, sam2_video_config
from streamvace.annotators.sam2_video import Sam2VideoAnnotator, load_sam2_video_model, parse_prompts, prompts_from_json
from streamvace.models.checkpoint_io import CheckpointError
from tiny_annotator_models import save, tiny_depth_anything, tiny_sam2_video

HEIGHT, WIDTH = 48, 64
DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model is hundreds of small ops per frame: one thread avoids oversubscribing a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_sam2_video_model(save(tiny_sam2_video(), tmp_path_factory.mktemp("sam2") / "tiny-sam2"))


def moving_square(frames: int, seed: int = 0) -> torch.Tensor:
    """[3, T, H, W] in [-1, 1]: a bright square drifting right over noise."""
    generator = torch.Generator().manual_seed(seed)
    video = torch.rand(3, frames, HEIGHT, WIDTH, generator=generator) * 0.4 - 0.8
    for t in range(frames):
        left = 6 + (t % 30)
        video[:, t, 14:30, left:left + 16] = 0.9
    return video


def reference_logits(model, video, **prompts):
    """transformers' own streaming session (no pruning, one image-encoder call per frame) and its post-processing."""
    from transformers import Sam2VideoProcessor
    from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession
    from transformers.models.sam2_video.video_processing_sam2_video import Sam2VideoVideoProcessor

    processor = Sam2VideoProcessor.__new__(Sam2VideoProcessor)  # its image processor needs torchvision;
    processor.target_size, processor.point_pad_value = model.config.image_size, -10  # prompts only need these
    session = Sam2VideoInferenceSession(inference_device="cpu", inference_state_device="cpu",
                                        video_storage_device="cpu", dtype=torch.float32)
    prompts = dict(prompts, obj_ids=list(prompts["obj_ids"]))  # the session keeps (and empties) this very list
    processor.add_inputs_to_inference_session(session, frame_idx=0, original_size=(HEIGHT, WIDTH), **prompts)
    pixels = Sam2VideoAnnotator(model, points=[[(1, 1)]]).pixel_values((video.transpose(0, 1) + 1) / 2)
    size = model.config.image_size
    post = Sam2VideoVideoProcessor()
    logits = []
    with torch.no_grad():
        for t in range(len(pixels)):
            out = model(inference_session=session, frame_idx=t, frame=pixels[t])
            logits.append(post.post_process_masks([out.pred_masks], [[HEIGHT, WIDTH]], [[size, size]], binarize=False,
                                                  pad_size={"height": size, "width": size})[0][:, 0])
    return torch.stack(logits, dim=1), session


def test_loader_reads_the_saved_folder(model):
    reference = tiny_sam2_video()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


@pytest.mark.parametrize("ours, theirs", [
    (dict(points=[[(20, 22)], [(50, 10), (8, 40, 0)]]),
     dict(obj_ids=[1, 2], input_points=[[[[20, 22], [20, 22]], [[50, 10], [8, 40]]]],
          input_labels=[[[1, 1], [1, 0]]])),
    (dict(points=[[(20, 22)]], boxes=[(12, 12, 34, 32)]),
     dict(obj_ids=[1], input_points=[[[[20, 22]]]], input_labels=[[[1]]], input_boxes=[[[12, 12, 34, 32]]])),
], ids=["points-two-objects", "box-and-point"])
def test_pruned_chunked_streaming_equals_transformers_unpruned_session(model, ours, theirs):
    if "points" in ours and len(ours["points"]) == 2:  # the processor pads ragged point lists; pad ours the same way
        ours = dict(points=[[(20, 22), (20, 22)], [(50, 10), (8, 40, 0)]])
    video = moving_square(14)
    expected, reference_session = reference_logits(model, video, **theirs)
    annotator = Sam2VideoAnnotator(model, **ours)
    chunks = [annotator.logits(video[:, a:b]) for a, b in ((0, 5), (5, 9), (9, 14))]
    logits = torch.cat(chunks, dim=1)
    assert logits.shape == expected.shape == (len(theirs["obj_ids"]), 14, HEIGHT, WIDTH)
    assert expected.abs().mean() > 0.1  # O(1) logits, so the tolerance below means something
    assert torch.allclose(logits, expected, atol=1e-5, rtol=1e-5)
    assert ((logits > 0) == (expected > 0)).float().mean() > 0.999
    assert len(reference_session.output_dict_per_obj[0]["non_cond_frame_outputs"]) == 13  # the unpruned one grows
    assert annotator.stored_frames()["non_cond_outputs"] <= annotator.window * len(theirs["obj_ids"])


def _chunked_logits(model, window_change=0, empty_memory_after=None):
    video = moving_square(14)
    annotator = Sam2VideoAnnotator(model, points=[[(20, 22)], [(50, 10), (8, 40, 0)]])
    annotator.window += window_change
    chunks = []
    for index, (a, b) in enumerate(((0, 5), (5, 9), (9, 14))):
        chunks.append(annotator.logits(video[:, a:b]))
        if index == empty_memory_after:
            for obj_idx in range(annotator.session.get_obj_num()):
                annotator.session.output_dict_per_obj[obj_idx]["non_cond_frame_outputs"].clear()
    return torch.cat(chunks, dim=1)


def test_later_masks_depend_on_the_memory_the_pruning_keeps(model):
    assert Sam2VideoAnnotator(model, points=[[(1, 1)]]).window == 3  # frame t reads frames t-3..t-1 (and frame 0)
    kept = _chunked_logits(model)
    emptied = _chunked_logits(model, empty_memory_after=0)
    assert torch.equal(emptied[:, :5], kept[:, :5])
    assert (emptied[:, 5:] - kept[:, 5:]).abs().max() > 1e-2  # the memory bank steers the later masks
    one_too_many = _chunked_logits(model, window_change=-1)
    assert (one_too_many[:, 5:] - kept[:, 5:]).abs().max() > 1e-3  # the oldest kept frame is read


def test_masks_are_the_union_of_objects_in_vace_mask_layout(model):
    video = moving_square(4)
    annotator = Sam2VideoAnnotator(model, points=[[(20, 22)], [(50, 10)]])
    logits = annotator.logits(video)
    annotator.reset()
    masks = annotator(video)
    assert masks.shape == (1, 4, HEIGHT, WIDTH) and masks.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(masks[0].bool(), (logits > 0).any(dim=0))


def _session_bytes(session) -> int:
    seen, total, stack = set(), 0, [session.__dict__]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            if item.data_ptr() not in seen:
                seen.add(item.data_ptr())
                total += item.numel() * item.element_size()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif hasattr(item, "__dict__") and not isinstance(item, type):
            stack.append(item.__dict__)
    return total


def test_memory_stays_bounded_over_500_streamed_frames(model):
    annotator = Sam2VideoAnnotator(model, points=[[(20, 22)]])
    video = moving_square(10)
    sizes, counts = [], []
    for _ in range(50):
        annotator(video)
        counts.append(annotator.stored_frames())
        sizes.append(_session_bytes(annotator.session))
    assert annotator.next_frame == 500
    for count in counts:
        assert count["processed_frames"] == 0 and count["vision_cache"] == 0 and count["cond_outputs"] == 1
        assert count["non_cond_outputs"] <= annotator.window and count["tracked"] <= annotator.window
    assert sizes[-1] == sizes[5] == max(sizes[5:]), f"session memory grew: {sizes[5]} -> {sizes[-1]} bytes"


def test_a_failed_chunk_leaves_the_stream_as_it_was(model, monkeypatch):
    video = moving_square(9)
    clean = Sam2VideoAnnotator(model, points=[[(20, 22)]])
    expected = torch.cat([clean.logits(video[:, :4]), clean.logits(video[:, 4:])], dim=1)

    annotator = Sam2VideoAnnotator(model, points=[[(20, 22)]])
    first = annotator.logits(video[:, :4])
    state = annotator.stored_frames(), annotator.next_frame
    calls = {"n": 0}
    original_forward = type(model).forward

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("user pressed Cancel")
        return original_forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        annotator.logits(video[:, 4:])
    monkeypatch.setattr(type(model), "forward", original_forward)
    assert (annotator.stored_frames(), annotator.next_frame) == state
    retried = torch.cat([first, annotator.logits(video[:, 4:])], dim=1)
    assert torch.allclose(retried, expected, atol=1e-5)


def test_bad_prompts_and_inputs_get_clear_errors(model, tmp_path):
    with pytest.raises(ValueError, match="at least one prompt"):
        Sam2VideoAnnotator(model)
    with pytest.raises(ValueError, match=r"\[x, y\]"):
        parse_prompts(points=[[(1, 2, 3, 4)]])
    with pytest.raises(ValueError, match="x0, y0, x1, y1"):
        parse_prompts(boxes=[(1, 2, 3)])
    annotator = Sam2VideoAnnotator(model, points=[[(20, 22)]])
    annotator(moving_square(2))
    with pytest.raises(ValueError, match="frame size changed"):
        annotator(moving_square(2)[..., :32])
    with pytest.raises(ValueError, match="no frames"):
        annotator(torch.zeros(3, 0, HEIGHT, WIDTH))
    with pytest.raises(CheckpointError, match="'depth_anything' model"):
        load_sam2_video_model(save(tiny_depth_anything(), tmp_path / "depth"))
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_sam2_video_model(str(tmp_path / "sam2.1_hiera_tiny.safetensors"))
    torch.save({"pretrained.cls_token": torch.zeros(1)}, tmp_path / "depth.pth")
    with pytest.raises(CheckpointError, match="not an original SAM2 checkpoint"):
        load_sam2_video_model(str(tmp_path / "depth.pth"))


def test_prompt_strings_from_the_ui():
    points, boxes = prompts_from_json('[{"x": 10, "y": 20}, {"x": 30, "y": 5}]', "[[1, 2]]", "[4, 5, 40, 50]")
    assert points == [[(10.0, 20.0, 1), (30.0, 5.0, 1), (1.0, 2.0, 0)]] and boxes == [[4.0, 5.0, 40.0, 50.0]]
    objects = parse_prompts(points, boxes + [[0, 0, 8, 8]])
    assert len(objects) == 2 and objects[0]["box"] == (4.0, 5.0, 40.0, 50.0) and objects[1]["points"] == []
    assert prompts_from_json("", "", "") == ([], [])
    with pytest.raises(ValueError, match="not valid JSON"):
        prompts_from_json("[{", "", "")
    np.testing.assert_equal(prompts_from_json("", "", '{"x0": 1, "y0": 2, "x1": 3, "y1": 4}')[1], [[1, 2, 3, 4]])


def _original_shapes():
    with open(os.path.join(DATA, "sam2_original_keys.json")) as handle:
        return json.load(handle)["models"]


def test_original_sam2_key_layouts_convert_onto_transformers_exactly():
    from transformers import Sam2VideoModel

    for name, shapes in _original_shapes().items():
        state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
        config = sam2_config_from_state(state)
        assert config.enable_occlusion_spatial_embedding == name.startswith("sam2.1")
        with torch.device("meta"):
            reference = Sam2VideoModel(config).state_dict()
        converted = convert_sam2_state(state)
        assert set(converted) == set(reference), name
        assert all(converted[k].shape == reference[k].shape for k in reference), name


def test_published_tiny_config_is_transformers_default():
    from transformers import Sam2VideoConfig

    assert sam2_video_config("tiny").to_dict() == Sam2VideoConfig().to_dict()  # documented as sam2.1 hiera tiny


def test_original_sam2_file_loads_through_the_loader(tmp_path):
    from safetensors.torch import save_file

    shapes = _original_shapes()["sam2.1_hiera_t"]
    generator = torch.Generator().manual_seed(0)
    state = {key: torch.randn(shape, generator=generator).to(torch.float16) for key, shape in shapes.items()}
    save_file(state, str(tmp_path / "sam2.1_hiera_tiny-fp16.safetensors"))  # kijai's layout: original keys, fp16
    model = load_sam2_video_model(str(tmp_path / "sam2.1_hiera_tiny-fp16.safetensors"))
    assert model.config.vision_config.backbone_config.blocks_per_stage == [1, 2, 7, 2]
    loaded = model.state_dict()
    assert torch.equal(loaded["prompt_encoder.point_embed.weight"][2],
                       state["sam_prompt_encoder.point_embeddings.2.weight"][0].float())
    assert torch.equal(loaded["vision_encoder.backbone.blocks.3.mlp.proj_out.weight"],
                       state["image_encoder.trunk.blocks.3.mlp.layers.1.weight"].float())
