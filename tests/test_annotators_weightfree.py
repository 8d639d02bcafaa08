"""Weight-free annotators (gray, scribble, flow, layout, masks, video I/O) on a moving square with known answers,
against OpenCV / RAFT's flow_viz as oracles, and chunked == whole clip."""

import os

import cv2
import numpy as np
import pytest
import torch

from streamvace.annotators.flow import FlowAnnotator, RaftFlow, farneback_flow, flow_to_color
from streamvace.annotators.frames import check_video
from streamvace.annotators.gray import GrayAnnotator
from streamvace.annotators.layout import LayoutAnnotator, LayoutError, draw_box_outlines, parse_layout
from streamvace.annotators.mask_outline import draw_mask_contours
from streamvace.annotators.masks import BoxMaskAnnotator, adjust_masks, fill_boxes, grow_masks
from streamvace.annotators.scribble import ScribbleAnnotator
from streamvace.annotators.video_io import VideoWriter, read_video_chunks, sample_clip

DATA = os.path.join(os.path.dirname(__file__), "data")
SPEED, SQUARE, HEIGHT, WIDTH = 4.0, 64, 120, 208
TOP = (HEIGHT - SQUARE) // 2


def square_left(t):
    return int(round(8 + SPEED * t))


@pytest.fixture(scope="module")
def clip():
    return sample_clip(frames=12, height=HEIGHT, width=WIDTH, square=SQUARE, speed=SPEED)


def uint8_frames(video):
    return ((video.transpose(0, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def unit(video):
    """[3, T, H, W] in [-1, 1] -> [T, H, W, 3] in [0, 1]."""
    return ((video + 1) / 2).permute(1, 2, 3, 0)


def test_outputs_have_vace_shape_range_and_three_equal_channels_for_grey_kinds(clip):
    for annotator in (GrayAnnotator(), ScribbleAnnotator("xdog"), ScribbleAnnotator("canny")):
        out = annotator(clip)
        assert out.shape == clip.shape and out.dtype == torch.float32
        assert out.min() >= -1 and out.max() <= 1
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_gray_matches_vaces_bgr2gray_on_rgb_frames(clip):
    gray = unit(GrayAnnotator()(clip))[..., 0].numpy()
    frames = uint8_frames(clip)
    reference = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames]) / 255.0
    assert np.abs(gray - reference).max() <= 1.0 / 255 + 1e-6
    # the square's bright checker cell: VACE's swapped weights 0.114 R + 0.587 G + 0.299 B
    r, g, b = unit(clip)[0, TOP + 2, square_left(0) + 2].tolist()
    assert gray[0, TOP + 2, square_left(0) + 2] == pytest.approx(0.114 * r + 0.587 * g + 0.299 * b, abs=1e-5)
    standard = unit(GrayAnnotator(vace_channel_order=False)(clip))[0, TOP + 2, square_left(0) + 2, 0]
    assert standard == pytest.approx(0.299 * r + 0.587 * g + 0.114 * b, abs=1e-5)


def test_xdog_matches_an_opencv_reference_and_draws_the_squares_texture(clip):
    lines = unit(ScribbleAnnotator("xdog")(clip))[..., 0].numpy() < 0.5  # dark = line
    frames = uint8_frames(clip).astype(np.float32)
    for t in (0, 7):
        small = cv2.GaussianBlur(frames[t], (0, 0), 0.5)
        large = cv2.GaussianBlur(frames[t], (0, 0), 5.0)
        reference = 2 * np.min(large - small, axis=2) > 32
        assert (lines[t] == reference).mean() > 0.999
    # lines where a pixel is darker than its surroundings in every channel: the square's dark checker cells
    left = square_left(7)
    assert lines[7, TOP + 8:TOP + 56, left + 8:left + 56].mean() > 0.1, "no lines inside the checkered square"
    assert not lines[7, 5:20, 150:200].any(), "lines in the flat background"


def test_canny_is_dark_lines_on_white_at_the_square_edges(clip):
    out = unit(ScribbleAnnotator("canny")(clip))[..., 0].numpy()
    frames = uint8_frames(clip)
    assert np.array_equal(out[3] < 0.5, cv2.Canny(frames[3], 100, 200) > 0)
    left = square_left(3)
    assert (out[3, TOP + 10:TOP + 50, left - 1:left + 1] < 0.5).any(axis=1).all()
    assert (out[3, 5:20, :] > 0.5).all()  # white paper far from edges
    inverted = unit(ScribbleAnnotator("canny", invert=True)(clip))[..., 0].numpy()
    assert np.allclose(inverted, 1 - out)


def test_farneback_measures_the_squares_motion():
    clip = sample_clip(frames=2, height=HEIGHT, width=WIDTH, square=SQUARE, speed=SPEED)
    frames = uint8_frames(clip)
    flow = farneback_flow(cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY), cv2.cvtColor(frames[1], cv2.COLOR_RGB2GRAY))
    assert flow.dtype == np.float32 and flow.shape == (HEIGHT, WIDTH, 2)
    inside = flow[TOP + 8:TOP + 56, square_left(1) + 8:square_left(1) + 56]
    assert np.abs(inside[..., 0].mean() - SPEED) < 0.1 and np.abs(inside[..., 1].mean()) < 0.1
    assert np.abs(flow[:15, :40]).max() < 0.05


def test_flow_colours_match_rafts_flow_viz_fixture():
    fixture = np.load(os.path.join(DATA, "flow_viz_fixture.npz"))
    colours = flow_to_color(torch.from_numpy(fixture["flow"]).permute(0, 3, 1, 2))
    ours = (colours.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    assert np.abs(ours.astype(int) - fixture["image"].astype(int)).max() <= 1
    assert (ours == fixture["image"]).mean() > 0.99


def test_flow_frames_show_rightward_motion_as_red_and_still_background_as_white(clip):
    out = unit(FlowAnnotator()(clip))
    centre = out[5, TOP + 32, square_left(5) + 32]
    assert centre[0] > 0.9 and centre[1] < 0.35 and centre[2] < 0.35, f"rightward motion should be red, got {centre}"
    assert (out[5, :15, :40] > 0.97).all(), "no motion should be white"


def test_flow_first_frame_repeats_the_first_flow_and_chunks_join_up(clip):
    whole = FlowAnnotator()(clip)
    assert torch.equal(whole[:, 0], whole[:, 1])  # VACE duplicates the first rendering
    stream = FlowAnnotator()
    chunked = torch.cat([stream(clip[:, :5]), stream(clip[:, 5:10]), stream(clip[:, 10:])], dim=1)
    assert torch.equal(chunked, whole)
    stream.reset()
    assert torch.equal(stream(clip[:, :5]), whole[:, :5])


def test_fixed_flow_scale_does_not_depend_on_the_frame(clip):
    flow = FlowAnnotator().flow(clip)
    single = flow_to_color(flow[5:6], max_flow=8.0)
    doubled = flow_to_color(torch.cat([flow[5:6], flow[5:6] * 2]), max_flow=8.0)
    assert torch.equal(single[0], doubled[0])


def test_raft_loads_torchvision_weights_or_says_what_to_install(tmp_path, clip):
    with pytest.raises(ValueError, match="RaftFlow"):
        FlowAnnotator("raft")
    try:
        from torchvision.models.optical_flow import raft_large, raft_small
    except ImportError:  # this environment: no torchvision
        with pytest.raises(ImportError, match="pip install torchvision"):
            RaftFlow(str(tmp_path / "raft_large.pth"))
        return
    for name, build in (("small", raft_small), ("large", raft_large)):
        torch.save(build(weights=None).state_dict(), tmp_path / f"raft_{name}.pth")
        raft = RaftFlow(str(tmp_path / f"raft_{name}.pth"), iterations=2)
        assert (len(raft.model.update_block.motion_encoder.convcorr2.state_dict()) == 0) == (name == "small")
        out = FlowAnnotator("raft", raft=raft)(clip[:, :3, :60, :100])
        assert out.shape == (3, 3, 60, 100)


def test_box_outlines_match_cv2_rectangle_thickness_2():
    boxes = [(10, 12, 50, 40), (60, 5, 61, 30), (30, 30, 90, 70)]
    drawn = draw_box_outlines(torch.tensor(boxes, dtype=torch.float32)[None], torch.zeros(3, 3), 80, 100)
    reference = np.full((80, 100), 255, np.uint8)
    for x0, y0, x1, y1 in boxes:
        cv2.rectangle(reference, (x0, y0), (x1, y1), 0, 2)
    assert np.array_equal(drawn[0, 0].numpy() < 0.5, reference < 128)


def test_layout_moves_a_box_from_start_to_end_and_continues_across_chunks():
    layout = '{"boxes": [[10, 10, 40, 30], [70, 50, 100, 70]], "color": [255, 0, 0]}'
    whole = LayoutAnnotator(layout, 90, 120, total_frames=9)(12)
    stream = LayoutAnnotator(layout, 90, 120, total_frames=9)
    assert torch.equal(torch.cat([stream(5), stream(4), stream(3)], dim=1), whole)
    first, last = unit(whole)[0], unit(whole)[8]
    assert torch.equal(first[10, 20], torch.tensor([1.0, 0.0, 0.0])) and (first[50:70, 70:100, 1] == 1).all()
    assert torch.equal(last[50, 85], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(unit(whole)[11], last)  # holds the end position after total_frames
    assert (unit(whole)[:, 80:, :5] == 1).all()  # white background


def test_trajectory_points_become_boxes_centred_on_the_points():
    points = '[{"x": 20, "y": 20}, {"x": 60, "y": 40}]'
    frames = unit(LayoutAnnotator(points, 64, 96, total_frames=2, box_size=10)(2))
    assert frames[0, 15, 20, 0] < 0.5 and frames[0, 20, 15, 0] < 0.5  # top and left edges around (20, 20)
    assert frames[1, 35, 60, 0] < 0.5 and frames[1, 20, 20, 0] > 0.5
    pairs = parse_layout("[[20, 20], [60, 40]]", box_size=10)
    assert len(pairs) == 1 and pairs[0][0].shape == (2, 4)
    two = parse_layout('[[{"x": 1, "y": 2}], {"boxes": [[0, 0, 5, 5]]}]')
    assert len(two) == 2


@pytest.mark.parametrize("text, message", [("", "JSON"), ("[]", "empty"), ('{"boxes": [[1, 2, 3]]}', "boxes"),
                                           ('[{"x": 1}]', "point"), ('{"points": [[1, 2]], "color": 3}', "colour"),
                                           ('{"other": 1}', "boxes")])
def test_bad_layout_json_gets_a_clear_error(text, message):
    with pytest.raises(LayoutError, match=message):
        parse_layout(text)


def test_masks_fill_grow_blur_invert_and_repeat():
    masks = fill_boxes(torch.tensor([[[10, 10, 19, 19]]], dtype=torch.float32), 40, 40)
    assert masks.shape == (1, 1, 40, 40) and masks.sum() == 100
    assert grow_masks(masks, 2).sum() == 14 * 14 and grow_masks(masks, -2).sum() == 6 * 6
    blurred = adjust_masks(masks, blur=2.0)
    assert 0 < blurred[0, 0, 9, 15] < 1 and blurred.max() <= 1
    inverted = adjust_masks(masks, invert=True, frames=5)
    assert inverted.shape == (1, 5, 40, 40) and inverted.sum() == 5 * (1600 - 100)
    with pytest.raises(ValueError, match="single static mask"):
        adjust_masks(torch.zeros(1, 2, 8, 8), frames=5)


def test_box_masks_stream_like_the_layout():
    whole = BoxMaskAnnotator('{"boxes": [[0, 0, 9, 9], [20, 20, 29, 29]]}', 32, 32, total_frames=3)(3)
    stream = BoxMaskAnnotator('{"boxes": [[0, 0, 9, 9], [20, 20, 29, 29]]}', 32, 32, total_frames=3)
    assert torch.equal(torch.cat([stream(2), stream(1)], dim=1), whole)
    assert whole[0, 0, 5, 5] == 1 and whole[0, 2, 25, 25] == 1 and whole[0, 2, 5, 5] == 0


def test_mask_contours_are_vaces_3px_outlines_on_white():
    masks = fill_boxes(torch.tensor([[[10, 10, 29, 29]]], dtype=torch.float32), 40, 40)
    images = draw_mask_contours(masks)
    assert images.shape == (1, 3, 40, 40)
    assert images[0, :, 10, 20].max() == 0 and images[0, :, 20, 20].min() == 1 and images[0, :, 2, 2].min() == 1


@pytest.mark.parametrize("video, message", [
    (torch.zeros(3, 0, 8, 8), "no frames"), (torch.zeros(4, 2, 8, 8), "3 colour channels"),
    (torch.zeros(2, 8, 8, 3), "3 colour channels"), (torch.zeros(3, 8, 8), "4 dimensions"),
    (torch.zeros(3, 2, 8, 8, dtype=torch.uint8), "float")])
def test_bad_video_chunks_get_clear_errors(video, message):
    with pytest.raises(ValueError, match=message):
        check_video(video)
    with pytest.raises(ValueError, match=message):
        FlowAnnotator()(video)


def test_flow_stream_state_is_unchanged_after_a_failed_chunk(clip):
    stream = FlowAnnotator()
    stream(clip[:, :4])
    before = stream.previous.copy()
    with pytest.raises(ValueError, match="frame size changed"):
        stream(clip[:, 4:6, :64, :64])
    assert np.array_equal(stream.previous, before)


def test_video_file_round_trip_in_chunks(tmp_path, clip):
    path = str(tmp_path / "clip.mp4")
    with VideoWriter(path, fps=12) as writer:
        writer.write(clip[:, :5])
        writer.write(clip[:, 5:])
    chunks = list(read_video_chunks(path, chunk_frames=5))
    assert [c.shape[1] for c, _ in chunks] == [5, 5, 2] and chunks[0][1] == pytest.approx(12)
    decoded = torch.cat([c for c, _ in chunks], dim=1)
    assert decoded.shape == clip.shape and (decoded - clip).abs().mean() < 0.03
    with pytest.raises(FileNotFoundError):
        list(read_video_chunks(str(tmp_path / "missing.mp4")))
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="not a readable video"):
        list(read_video_chunks(str(tmp_path / "empty.mp4")))
