"""The GPU pose drawing (annotators/pose_raster.py, run here on the CPU) against VACE's own rendering (the fixture)
and the exact OpenCV renderer (annotators/pose_render.py): joints and face dots exact, limbs within their outline."""

import json
import os

import cv2
import numpy as np
import pytest
import torch

from streamvace.annotators.pose import PoseAnnotator, load_person_detector, load_pose_model
from streamvace.annotators.pose_raster import area_resize, render_pose_frames
from streamvace.annotators.pose_render import FACE_SLICE, coco_to_openpose, render_pose_frame
from streamvace.annotators.video_io import sample_clip
from tiny_annotator_models import save, tiny_rt_detr, tiny_vitpose

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture(scope="module")
def fixture():
    with open(os.path.join(DATA, "pose_fixture.json")) as handle:
        data = json.load(handle)
    image = cv2.imread(os.path.join(DATA, "pose_fixture_vace.png"))[..., ::-1]
    keypoints = np.array(data["keypoints_133"], np.float32)
    return data["height"], data["width"], keypoints, np.array(data["scores_133"], np.float32), image


def opencv_frame(height, width, keypoints, scores, color_order="vace", resolution=1024):
    """The exact reference: pose_render's OpenCV drawing of every person, with face."""
    body, body_scores = coco_to_openpose(keypoints[:, :17], scores[:, :17])
    return render_pose_frame(height, width, body, body_scores, keypoints[:, FACE_SLICE], scores[:, FACE_SLICE],
                             color_order, resolution)


def torch_frame(height, width, keypoints, scores, color_order="vace", resolution=1024, present=None):
    """The GPU drawing of one frame, as uint8 [H, W, 3]."""
    present = torch.ones(1, len(keypoints), dtype=torch.bool) if present is None else torch.tensor(present)[None]
    images = render_pose_frames(torch.from_numpy(keypoints)[None], torch.from_numpy(scores)[None], present, height,
                                width, color_order=color_order, resolution=resolution)
    return (images[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def near_limb_outline(image: np.ndarray) -> np.ndarray:
    """Pixels within 1 px of a colour change of the reference image (the outlines of what is drawn)."""
    kernel = np.ones((3, 3), np.uint8)
    channels = [cv2.dilate(image[..., c], kernel) != cv2.erode(image[..., c], kernel) for c in range(3)]
    return cv2.dilate(np.any(channels, axis=0).astype(np.uint8), kernel) > 0


def assert_close_to(ours: np.ndarray, reference: np.ndarray, equal_share: float = 0.99) -> None:
    """The documented tolerance: most pixels identical, every other one on an outline of the reference drawing."""
    differs = np.abs(ours.astype(int) - reference.astype(int)).max(-1) > 0
    assert 1 - differs.mean() >= equal_share, f"only {1 - differs.mean():.4f} of the pixels are identical"
    assert not (differs & ~near_limb_outline(reference)).any(), "a difference away from any outline"
    drawn, ours_drawn = reference.max(-1) > 0, ours.max(-1) > 0
    assert (drawn & ours_drawn).sum() / (drawn | ours_drawn).sum() > 0.97


@pytest.mark.parametrize("color_order", ["vace", "openpose"])
def test_matches_vaces_fixture_within_limb_outlines(fixture, color_order):
    height, width, keypoints, scores, expected = fixture
    expected = expected if color_order == "vace" else expected[..., ::-1]
    assert_close_to(torch_frame(height, width, keypoints, scores, color_order), expected)


def eight_people(height=480, width=832, seed=0):
    """Eight fixture-shaped people of different sizes, some overlapping, scores straddling the 0.3 threshold."""
    with open(os.path.join(DATA, "pose_fixture.json")) as handle:
        base = np.array(json.load(handle)["keypoints_133"], np.float32)
    rng = np.random.default_rng(seed)
    people = [(base[i % 2] - base[i % 2, :17].min(0)) * rng.uniform(1.0, 1.8)
              + [rng.uniform(0, width - 250), rng.uniform(0, height - 350)] for i in range(8)]
    return np.array(people, np.float32), rng.uniform(0.2, 1.0, (8, 133)).astype(np.float32)


def test_matches_the_opencv_renderer_for_eight_people_at_480x832():
    keypoints, scores = eight_people()
    present = [True] * 7 + [False]
    reference = opencv_frame(480, 832, keypoints[:7], scores[:7])
    assert_close_to(torch_frame(480, 832, keypoints, scores, present=present), reference)


def test_joints_and_face_dots_are_exact_on_the_canvas(fixture):
    height, width, keypoints, scores, _ = fixture
    scores = scores.copy()
    scores[:, :17] = 0.0
    scores[:, [0, 9, 16]] = 0.9  # nose, a wrist, an ankle: joints with no limb between them
    scores[0, FACE_SLICE][::3] = 0.1  # some face dots below the threshold
    args = (height, width, keypoints, scores, "vace", 0)  # resolution 0: drawn at frame size, no resizing
    assert np.array_equal(torch_frame(*args), opencv_frame(*args))


def test_limbs_differ_only_on_their_outline_on_the_canvas():
    keypoints, scores = eight_people(seed=1)
    scores[:] = 0.9
    keypoints[0, [5, 7, 9]] = [[-2000, 300], [600, 200], [700, 150]]  # an arm reaching in from far outside
    keypoints[1, [6, 8, 10]] = [[700, -500], [760, 200], [1600, 900]]
    ours, reference = torch_frame(480, 832, keypoints, scores, resolution=0), opencv_frame(480, 832, keypoints,
                                                                                          scores, resolution=0)
    differs = (ours != reference).any(-1)
    assert differs.sum() <= 0.05 * (reference.max(-1) > 0).sum()
    assert not (differs & ~near_limb_outline(reference)).any()


def test_area_resize_is_opencvs_inter_area():
    rng = np.random.default_rng(2)
    canvas = (rng.random((64, 112, 3)) > 0.9) * rng.integers(0, 256, (64, 112, 3))
    for height, width in [(30, 52), (32, 56), (27, 50)]:
        expected = cv2.resize(canvas.astype(np.uint8), (width, height), interpolation=cv2.INTER_AREA).astype(int)
        ours = area_resize(torch.from_numpy(canvas).float().permute(2, 0, 1)[None], height, width)
        ours = ours[0].permute(1, 2, 0).int().numpy()
        assert np.abs(ours - expected).max() <= 1 and (ours == expected).mean() > 0.995


def test_annotator_draws_with_either_renderer(tmp_path):
    pose = load_pose_model(save(tiny_vitpose(), tmp_path / "vitpose"))
    detector = load_person_detector(save(tiny_rt_detr(), tmp_path / "detector"))
    clip = sample_clip(frames=2, height=48, width=80, square=16, speed=3)
    frames = {renderer: PoseAnnotator(pose, detector, max_people=3, detection_threshold=0.0, renderer=renderer)(clip)
              for renderer in ("torch", "opencv")}
    assert frames["torch"].shape == frames["opencv"].shape == clip.shape
    assert (frames["opencv"] > -1).any(), "nothing drawn although every detection passes the threshold"
    assert (frames["torch"] == frames["opencv"]).float().mean() > 0.98
    with pytest.raises(ValueError, match="renderer must be one of"):
        PoseAnnotator(pose, detector, renderer="gpu")
