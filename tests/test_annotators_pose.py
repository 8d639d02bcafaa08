"""Pose: drawing matches a fixture rendered by VACE's own code; pre/post-processing matches transformers' RT-DETR and
ViTPose processors; tiny random RT-DETR / ViTPose folders load through our loaders and give VACE-format frames."""

import json
import os

import cv2
import numpy as np
import pytest
import torch

from streamvace.annotators.pose import (PoseAnnotator, detector_inputs, keypoints_from_heatmaps, load_person_detector,
                                        load_pose_model, person_label, persons_from_outputs, pose_crops)
from streamvace.annotators.pose_render import FACE_SLICE, coco_to_openpose, render_pose_frame
from streamvace.annotators.video_io import sample_clip
from streamvace.models.checkpoint_io import CheckpointError
from tiny_annotator_models import save, tiny_depth_anything, tiny_rt_detr, tiny_vitpose

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture(scope="module")
def fixture():
    with open(os.path.join(DATA, "pose_fixture.json")) as handle:
        data = json.load(handle)
    image = cv2.imread(os.path.join(DATA, "pose_fixture_vace.png"))[..., ::-1]
    return data, np.array(data["keypoints_133"]), np.array(data["scores_133"]), image


def _render(data, keypoints, scores, color_order="vace", face=True):
    body, body_scores = coco_to_openpose(keypoints[:, :17], scores[:, :17])
    return render_pose_frame(data["height"], data["width"], body, body_scores,
                             keypoints[:, FACE_SLICE] if face else None, scores[:, FACE_SLICE] if face else None,
                             color_order)


def test_drawing_matches_the_fixture_rendered_by_vace(fixture):
    data, keypoints, scores, expected = fixture
    assert np.array_equal(_render(data, keypoints, scores), expected)


def test_openpose_colour_order_is_vaces_with_red_and_blue_swapped(fixture):
    data, keypoints, scores, expected = fixture
    openpose = _render(data, keypoints, scores, "openpose")
    assert np.array_equal(openpose, expected[..., ::-1])
    # the second person's neck -> right-shoulder limb is blue in VACE's frames, red in OpenPose's palette
    neck = (keypoints[1, 5] + keypoints[1, 6]) / 2
    x, y = ((neck + keypoints[1, 6]) / 2).astype(int)
    assert expected[y, x, 2] > 100 and expected[y, x, 0] < 50
    assert openpose[y, x, 0] > 100 and openpose[y, x, 2] < 50


def test_coco_to_openpose_adds_the_neck_and_reorders():
    keypoints = np.arange(17 * 2, dtype=np.float64).reshape(1, 17, 2)
    scores = np.full((1, 17), 0.9)
    body, body_scores = coco_to_openpose(keypoints, scores)
    assert np.allclose(body[0, 1], (keypoints[0, 5] + keypoints[0, 6]) / 2)
    assert np.array_equal(body[0, 2], keypoints[0, 6]) and np.array_equal(body[0, 5], keypoints[0, 5])  # shoulders
    assert np.array_equal(body[0, 14], keypoints[0, 2]) and np.array_equal(body[0, 17], keypoints[0, 3])  # eye, ear
    assert body_scores[0, 1] == 1.0
    scores[0, 6] = 0.3
    assert coco_to_openpose(keypoints, scores)[1][0, 1] == 0.0


def test_crops_match_the_vitpose_processors_warp():
    from transformers.models.vitpose import image_processing_pil_vitpose as vitpose_processing

    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (90, 140, 3)).astype(np.uint8), (0, 0), 3)
    boxes_xywh = np.array([[20.5, 10.0, 40.0, 70.0], [70.0, 30.0, 50.0, 30.0]], np.float32)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = []
    for box in boxes_xywh:  # the processor's geometry; cv2.warpAffine is what its scipy warp reimplements
        center, scale = vitpose_processing.box_to_center_and_scale(box, image_width=48, image_height=64)
        matrix = vitpose_processing.get_warp_matrix(0, center * 2.0, np.array([48, 64]) - 1.0, scale * 200.0)
        crop = cv2.warpAffine(image.astype(np.float32), matrix, (48, 64), flags=cv2.INTER_LINEAR)
        expected.append(((crop / 255.0 - mean) / std).transpose(2, 0, 1))
    expected = torch.tensor(np.stack(expected), dtype=torch.float32)
    boxes = torch.from_numpy(np.concatenate([boxes_xywh[:, :2], boxes_xywh[:, :2] + boxes_xywh[:, 2:]], 1))
    ours = pose_crops(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, boxes[None], 64, 48)
    assert ours.shape == expected.shape == (2, 3, 64, 48)
    interior = (ours - expected)[..., 2:-2, 2:-2].abs()
    assert interior.mean() < 1e-3 and interior.max() < 0.05


def _gaussian_filter(heatmap, sigma, radius, axes):
    """scipy.ndimage.gaussian_filter(mode='reflect') for 2-D maps, through OpenCV (scipy is not installed here)."""
    size = 2 * radius[0] + 1
    return cv2.GaussianBlur(heatmap, (size, size), sigma, borderType=cv2.BORDER_REFLECT)


def test_keypoints_match_the_vitpose_post_processing(monkeypatch):
    from transformers import VitPoseImageProcessorPil
    from transformers.models.vitpose import image_processing_pil_vitpose as vitpose_processing
    from transformers.models.vitpose.modeling_vitpose import VitPoseEstimatorOutput

    monkeypatch.setattr(vitpose_processing, "gaussian_filter", _gaussian_filter, raising=False)

    rng = np.random.default_rng(1)
    ys, xs = np.mgrid[0:16, 0:12].astype(np.float32)
    centres = rng.uniform([1.5, 1.5], [10.5, 14.5], (3, 17, 2))
    heatmaps = np.exp(-((xs - centres[..., :1, None]) ** 2 + (ys - centres[..., 1:, None]) ** 2) / 3.0)
    heatmaps = (heatmaps + rng.uniform(0, 0.02, heatmaps.shape)).astype(np.float32)
    boxes_xywh = np.array([[10.0, 20.0, 30.0, 60.0], [50.0, 5.0, 40.0, 40.0], [0.0, 0.0, 20.0, 10.0]], np.float32)
    processor = VitPoseImageProcessorPil(size={"height": 64, "width": 48})
    expected = processor.post_process_pose_estimation(
        VitPoseEstimatorOutput(heatmaps=torch.from_numpy(heatmaps)), boxes=[boxes_xywh])[0]
    boxes = torch.from_numpy(np.concatenate([boxes_xywh[:, :2], boxes_xywh[:, :2] + boxes_xywh[:, 2:]], 1))
    keypoints, scores = keypoints_from_heatmaps(torch.from_numpy(heatmaps), boxes, 64, 48)
    for person in range(3):
        assert torch.allclose(keypoints[person], expected[person]["keypoints"].float(), atol=1e-3)
        assert torch.allclose(scores[person], expected[person]["scores"].float(), atol=1e-6)


def test_person_boxes_match_the_rt_detr_post_processing():
    from transformers import RTDetrImageProcessorPil
    from transformers.models.rt_detr.modeling_rt_detr import RTDetrObjectDetectionOutput

    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 30, 4, generator=generator) * 0.5 - 6  # other classes: unlikely
    logits[..., 2] = torch.randn(2, 30, generator=generator) * 1.5  # persons: transformers' top-30 pairs hold them all
    pred_boxes = torch.rand(2, 30, 4, generator=generator) * 0.5 + 0.1
    processor = RTDetrImageProcessorPil()
    expected = processor.post_process_object_detection(
        RTDetrObjectDetectionOutput(logits=logits, pred_boxes=pred_boxes), threshold=0.3, target_sizes=[(90, 160)] * 2)
    boxes, scores = persons_from_outputs(logits, pred_boxes, 2, 90, 160, max_people=30)
    for frame in range(2):
        people = expected[frame]["labels"] == 2
        keep = scores[frame] > 0.3
        assert torch.allclose(scores[frame][keep], expected[frame]["scores"][people])
        assert torch.allclose(boxes[frame][keep], expected[frame]["boxes"][people], atol=1e-4)


def test_detector_input_matches_the_rt_detr_processor():
    from transformers import RTDetrImageProcessorPil

    rng = np.random.default_rng(3)
    image = cv2.GaussianBlur(rng.integers(0, 256, (120, 200, 3)).astype(np.uint8), (0, 0), 2)
    expected = RTDetrImageProcessorPil()(image, return_tensors="pt").pixel_values
    ours = detector_inputs(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    assert ours.shape == expected.shape == (1, 3, 640, 640)
    assert (ours - expected).abs().mean() < 0.01


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"pose": save(tiny_vitpose(), root / "vitpose" / "tiny"),
            "wholebody": save(tiny_vitpose(seed=1, keypoints=133), root / "vitpose" / "tiny-wholebody"),
            "detector": save(tiny_rt_detr(), root / "detection" / "tiny-rtdetr")}


def test_pose_frames_from_tiny_models_have_vace_format(folders):
    pose, detector = load_pose_model(folders["pose"]), load_person_detector(folders["detector"])
    clip = sample_clip(frames=4, height=72, width=120, square=24, speed=3)
    whole = PoseAnnotator(pose, detector, max_people=12, detection_threshold=0.0)(clip)
    assert whole.shape == clip.shape and whole.min() >= -1 and whole.max() <= 1
    assert (whole > -1).any(), "nothing drawn although every detection passes the threshold"
    nobody = PoseAnnotator(pose, detector, max_people=3, detection_threshold=1.0)(clip)
    assert (nobody == -1).all(), "no person passes: the frame must stay black"


def test_keypoints_of_a_chunk_equal_frame_by_frame(folders):
    pose = load_pose_model(folders["pose"])
    images = (sample_clip(frames=3, height=72, width=120, square=24, speed=3).transpose(0, 1) + 1) / 2
    boxes = torch.tensor([[[10.0, 5.0, 50.0, 70.0], [60.0, 20.0, 110.0, 60.0]]]).repeat(3, 1, 1)
    boxes = boxes + torch.arange(3.0).view(3, 1, 1)

    def keypoints(frames, frame_boxes):
        with torch.no_grad():
            heatmaps = pose(pixel_values=pose_crops(frames, frame_boxes, 64, 48)).heatmaps
        return keypoints_from_heatmaps(heatmaps, frame_boxes.reshape(-1, 4), 64, 48)[0]

    whole = keypoints(images, boxes)
    one_by_one = torch.cat([keypoints(images[t:t + 1], boxes[t:t + 1]) for t in range(3)])
    assert torch.allclose(whole, one_by_one, atol=1e-3)


def test_whole_body_models_draw_the_face(folders):
    pose, detector = load_pose_model(folders["wholebody"]), load_person_detector(folders["detector"])
    clip = sample_clip(frames=2, height=72, width=120, square=24, speed=3)
    images = (clip.transpose(0, 1) + 1) / 2
    annotator = PoseAnnotator(pose, detector, max_people=2, detection_threshold=0.0, draw_resolution=0)
    keypoints, scores, _ = annotator.keypoints(images)
    assert keypoints.shape == (2, 2, 133, 2)
    with_face = annotator(clip)
    annotator.draw_face = False
    without_face = annotator(clip)
    face_points = (scores[..., FACE_SLICE] >= 0.3).sum()
    assert face_points > 0 and not torch.equal(with_face, without_face)


def test_pose_loaders_reject_wrong_models_clearly(folders, tmp_path):
    with pytest.raises(CheckpointError, match="'rt_detr' model"):
        load_pose_model(folders["detector"])
    with pytest.raises(CheckpointError, match="'vitpose' model"):
        load_person_detector(folders["pose"])
    depth = save(tiny_depth_anything(), tmp_path / "depth")
    with pytest.raises(CheckpointError, match="ViTPose"):
        load_pose_model(depth)
    no_person = tiny_rt_detr()
    no_person.config.id2label = {0: "cat", 1: "car", 2: "dog"}
    no_person.config.label2id = {"cat": 0, "car": 1, "dog": 2}
    with pytest.raises(ValueError, match="'person' label"):
        load_person_detector(save(no_person, tmp_path / "no-person"))
    with pytest.raises(CheckpointError, match="no weight file"):
        os.makedirs(tmp_path / "config-only")
        (tmp_path / "config-only" / "config.json").write_text(json.dumps({"model_type": "vitpose"}))
        load_pose_model(str(tmp_path / "config-only"))


def test_detecting_every_nth_frame_reuses_the_last_detected_boxes(folders):
    pose, detector = load_pose_model(folders["pose"]), load_person_detector(folders["detector"])
    images = (sample_clip(frames=5, height=72, width=120, square=24, speed=6).transpose(0, 1) + 1) / 2
    batches = []
    hook = detector.register_forward_hook(lambda module, args, kwargs, output: batches.append(
        kwargs["pixel_values"].shape[0]), with_kwargs=True)
    every_frame = PoseAnnotator(pose, detector, max_people=4).keypoints(images)
    every_third = PoseAnnotator(pose, detector, max_people=4, detect_every=3).keypoints(images)
    hook.remove()
    assert batches == [5, 2]  # frames 0 and 3 only
    for exact, approximate in zip(every_frame, every_third):
        assert torch.allclose(exact[[0, 3]], approximate[[0, 3]], atol=1e-4)
    with torch.no_grad():  # frames 1 and 2 are posed inside the boxes found in frame 0
        outputs = detector(pixel_values=detector_inputs(images[::3]))  # the annotator's detector batch
        boxes = persons_from_outputs(outputs.logits, outputs.pred_boxes, person_label(detector.config), 72, 120, 4)[0]
        boxes = boxes[:1].expand(2, -1, -1)
        heatmaps = pose(pixel_values=pose_crops(images[1:3], boxes, 64, 48)).heatmaps
    keypoints = keypoints_from_heatmaps(heatmaps, boxes.reshape(-1, 4), 64, 48)[0].reshape(2, 4, -1, 2)
    assert torch.allclose(every_third[0][1:3], keypoints, atol=1e-4)
    assert torch.equal(every_third[2][1:3], every_third[2][:1].expand(2, -1))
    with pytest.raises(ValueError, match="detect_every must be at least 1"):
        PoseAnnotator(pose, detector, detect_every=0)
