"""Outpainting canvases and clip extension controls against independent computations (numpy padding, explicit
frame lists), and their nodes as ComfyUI calls them."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from streamvace.annotators.outpaint import outpaint_canvas, outpaint_padding
from streamvace.models.wan.vace_context import clip_extension_control, pixel_frame_start, stream_length
from streamvace.nodes import NODE_CLASS_MAPPINGS as NODES


def _video(frames, h, w, seed=0):
    return torch.rand(3, frames, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_padding_follows_vace_expand_ratio():
    assert outpaint_padding(40, 100, ["left", "right"], 0.3) == {"top": 0, "bottom": 0, "left": 30, "right": 30}
    assert outpaint_padding(40, 100, ["top"], 0.3, pixels=8) == {"top": 8, "bottom": 0, "left": 0, "right": 0}
    with pytest.raises(ValueError, match="sides must be among"):
        outpaint_padding(40, 100, ["up"], 0.3)


@pytest.mark.parametrize("sides", [["left", "right"], ["top"], ["bottom", "right"], ["top", "bottom", "left", "right"]])
def test_canvas_equals_numpy_padding_rounded_to_16(sides):
    video = _video(2, 20, 36)
    padding = outpaint_padding(20, 36, sides, 0.25)
    frames, mask = outpaint_canvas(video, padding)
    assert frames.shape[2] % 16 == 0 and frames.shape[3] % 16 == 0
    # independently: where the source landed (the extra rows/columns for 16 go to the chosen sides only)
    rows, cols = np.nonzero(mask[0, 0].numpy() == 0)
    top, left = rows.min(), cols.min()
    assert (rows.max() - top + 1, cols.max() - left + 1) == (20, 36)
    bottom, right = frames.shape[2] - 20 - top, frames.shape[3] - 36 - left
    for side, amount in (("top", top), ("bottom", bottom), ("left", left), ("right", right)):
        pair = ("top", "bottom") if side in ("top", "bottom") else ("left", "right")
        grown = any(s in sides for s in pair)  # a dimension not grown only gets the rounding, on both sides
        assert amount >= padding[side] and (amount > 0) == (side in sides) if grown else amount < 16, side
    pads = ((0, 0), (0, 0), (top, bottom), (left, right))
    np.testing.assert_array_equal(frames.numpy(), np.pad(video.numpy(), pads, constant_values=0.0))
    np.testing.assert_array_equal(mask.numpy(), np.pad(np.zeros((1, 2, 20, 36), np.float32), pads,
                                                       constant_values=1.0))


def test_canvas_scaled_to_a_fixed_size_keeps_the_expanded_layout():
    video = _video(3, 32, 32)
    frames, mask = outpaint_canvas(video, {"left": 16, "right": 16}, size=(32, 64))
    assert frames.shape == (3, 3, 32, 64) and mask.shape == (1, 3, 32, 64)
    # grown canvas 32 x 64 fits exactly: no scaling, source in the middle
    assert torch.equal(frames[:, :, :, 16:48], video) and mask[:, :, :, 16:48].max() == 0
    assert mask[:, :, :, :16].min() == 1 and frames[:, :, :, 48:].abs().max() == 0
    half, mask_half = outpaint_canvas(video, {"left": 16, "right": 16}, size=(16, 64))  # scale 1/2, centred
    expected = F.interpolate(video.transpose(0, 1), size=(16, 16), mode="bilinear", align_corners=False,
                             antialias=True).transpose(0, 1)
    rows, cols = torch.nonzero(mask_half[0, 0] == 0, as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (0, 15, 24, 39)
    assert torch.allclose(half[:, :, :, 24:40], expected, atol=1e-6)


def test_extension_controls_place_known_frames_with_mask_zero():
    clip, end = _video(5, 16, 16, seed=1), _video(4, 16, 16, seed=2)
    assert [stream_length(n) for n in (1, 9, 10, 21, 22)] == [(9, 1), (9, 1), (21, 2), (21, 2), (33, 3)]
    frames, mask, chunks = clip_extension_control("first_clip", clip, 10)  # 15 -> 21 frames
    assert chunks == 2 and frames.shape[1] == 21 == pixel_frame_start(2)
    known = [f for f in range(21) if mask[0, f].max() == 0]
    assert known == [0, 1, 2, 3, 4] and torch.equal(frames[:, :5], clip) and frames[:, 5:].abs().max() == 0
    frames, mask, chunks = clip_extension_control("last_clip", clip, 4)  # 9 frames: the clip ends the video
    assert chunks == 1 and [f for f in range(9) if mask[0, f].max() == 0] == [4, 5, 6, 7, 8]
    assert torch.equal(frames[:, 4:], clip) and mask[:, :4].min() == 1
    frames, mask, chunks = clip_extension_control("first_last_clip", clip, 12, end)  # 21 frames
    assert [f for f in range(21) if mask[0, f].max() == 0] == [0, 1, 2, 3, 4, 17, 18, 19, 20]
    assert torch.equal(frames[:, 17:], end) and frames[:, 5:17].abs().max() == 0
    with pytest.raises(ValueError, match="needs an end clip"):
        clip_extension_control("first_last_clip", clip, 4)
    with pytest.raises(ValueError, match="differ in size"):
        clip_extension_control("first_last_clip", clip, 4, _video(2, 16, 32))


def test_outpaint_and_extend_nodes_convert_comfyui_types():
    image = torch.rand(2, 20, 36, 3)
    canvas, mask = NODES["StreamVACEOutpaint"]().outpaint(image, False, False, True, True, 0.25, 0, 0, 0)
    assert canvas.shape == (2, 32, 64, 3) and mask.shape == (2, 32, 64)
    rows, cols = torch.nonzero(mask[0] == 0, as_tuple=True)
    assert torch.allclose(canvas[:, rows.min():rows.max() + 1, cols.min():cols.max() + 1], image, atol=1e-6)
    assert torch.allclose(canvas[mask == 1], torch.full_like(canvas[mask == 1], 0.5))  # gray
    sized = NODES["StreamVACEOutpaint"]().outpaint(image, True, False, False, False, 0.0, 8, 64, 48)
    assert sized[0].shape == (2, 48, 64, 3)
    with pytest.raises(ValueError, match="both width and height"):
        NODES["StreamVACEOutpaint"]().outpaint(image, True, False, False, False, 0.3, 0, 64, 0)
    video, mask, chunks = NODES["StreamVACEExtendVideo"]().extend("first_clip", torch.rand(9, 16, 16, 3), 12)
    assert video.shape == (21, 16, 16, 3) and chunks == 2 and mask[:9].max() == 0 and mask[9:].min() == 1


def _known_box(mask):
    """(first row, last row, first column, last column) of the mask's keep (0) region."""
    rows, cols = torch.nonzero(mask[0] == 0, as_tuple=True)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def test_outpaint_node_grows_only_the_chosen_sides_by_ratio_or_pixels():
    image = torch.rand(1, 20, 36, 3)
    outpaint = NODES["StreamVACEOutpaint"]().outpaint
    # left only, 0.25 of the width: 9 px, rounded up to 48 wide on the left; the height rounds up to 32 evenly
    canvas, mask = outpaint(image, False, False, True, False, 0.25, 0, 0, 0)
    assert canvas.shape == (1, 32, 48, 3) and _known_box(mask) == (6, 25, 12, 47)
    assert torch.allclose(canvas[:, 6:26, 12:48], image, atol=1e-6)
    # right only: the source stays on the left edge
    assert _known_box(outpaint(image, False, False, False, True, 0.25, 0, 0, 0)[1]) == (6, 25, 0, 35)
    # top only by 16 pixels (the ratio is ignored): 36 -> 48 high on top, the width rounds up to 48 evenly
    canvas, mask = outpaint(image, True, False, False, False, 0.25, 16, 0, 0)
    assert canvas.shape == (1, 48, 48, 3) and _known_box(mask) == (28, 47, 6, 41)
    assert _known_box(outpaint(image, False, True, False, False, 0.25, 16, 0, 0)[1]) == (0, 19, 6, 41)


def test_extend_node_places_the_clips_for_every_mode():
    extend = NODES["StreamVACEExtendVideo"]().extend
    clip, end = torch.rand(4, 16, 16, 3), torch.rand(5, 16, 16, 3)
    video, mask, chunks = extend("last_clip", clip, 5)  # 5 new frames, then the clip: 9 frames
    assert chunks == 1 and video.shape[0] == 9 and mask[:5].min() == 1 and mask[5:].max() == 0
    assert torch.allclose(video[5:], clip, atol=1e-6) and torch.allclose(video[:5], torch.full_like(video[:5], 0.5))
    video, mask, chunks = extend("first_last_clip", clip, 12, end_clip=end)  # 4 + 12 + 5 = 21 frames
    assert chunks == 2 and video.shape[0] == 21
    assert [f for f in range(21) if mask[f].max() == 0] == [0, 1, 2, 3, 16, 17, 18, 19, 20]
    assert torch.allclose(video[:4], clip, atol=1e-6) and torch.allclose(video[16:], end, atol=1e-6)
