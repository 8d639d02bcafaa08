"""Farnebäck flow, the backward warp against cv2.remap, and the flicker metrics (with their blur trap)."""

import cv2
import numpy as np
import pytest
import torch
from dreamlite_tiny import random_frames
from dreamlite_tiny import one_torch_thread  # noqa: F401 (an autouse fixture)

from streamvace.models.dreamlite.flicker_metrics import flicker_report, high_frequency_energy, sobel_sharpness, warping_error
from streamvace.models.flow_warp import FlowWorkers, farneback_flow, gray_uint8, wait_flows, warp_backward


def _clip(count=6, size=64):
    return random_frames(count, size, seed=11).numpy()


def test_farneback_flow_finds_a_known_shift():
    frames = _clip(2)
    previous, current = gray_uint8(frames[0]), gray_uint8(frames[1])
    flow = farneback_flow(previous, current)
    assert flow.shape == (64, 64, 2) and flow.dtype == np.float32
    # random_frames moves the view by (+3, +2) px, so the content moves by (-3, -2)
    centre = flow[16:48, 16:48].reshape(-1, 2).mean(0)
    np.testing.assert_allclose(centre, [-3.0, -2.0], atol=0.5)


def test_flow_workers_match_the_direct_call():
    frames = _clip(4)
    workers = FlowWorkers(2)
    try:
        flows = wait_flows(workers.flows_from(gray_uint8(frames[0]), frames[1:]))
    finally:
        workers.close()
    for flow, frame in zip(flows, frames[1:]):
        np.testing.assert_array_equal(flow, farneback_flow(gray_uint8(frames[0]), gray_uint8(frame)))


def test_backward_warp_equals_cv2_remap_with_replicated_borders():
    image = _clip(1)[0].astype(np.float32)
    generator = np.random.default_rng(0)
    flow = (generator.standard_normal((64, 64, 2)) * 4 + [9.0, -7.0]).astype(np.float32)  # pushes past the borders
    ys, xs = np.mgrid[:64, :64].astype(np.float32)
    expected = cv2.remap(image, xs - flow[..., 0], ys - flow[..., 1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    ours = warp_backward(torch.from_numpy(image).permute(2, 0, 1)[None], torch.from_numpy(flow)[None])
    # cv2 interpolates with 1/32-pixel weights; the frames' gradients are small, so 5e-3 bounds that
    np.testing.assert_allclose(ours[0].permute(1, 2, 0).numpy(), expected, atol=5e-3)


def test_warp_of_a_bfloat16_frame_keeps_pixel_accuracy():
    image = torch.from_numpy(_clip(1, 512)[0]).permute(2, 0, 1)[None]
    shift = torch.zeros(1, 512, 512, 2)
    shift[..., 0] = 1.0
    warped = warp_backward(image.bfloat16(), shift).float()
    torch.testing.assert_close(warped[..., 1:], image.bfloat16().float()[..., :-1], atol=1e-2, rtol=0)


def test_warping_error_is_zero_for_a_frozen_clip_and_tracks_motion():
    frames = _clip()
    frozen = np.repeat(frames[:1], len(frames), axis=0)
    assert warping_error(frozen, frozen) < 0.1  # Farnebäck leaves a few hundredths of a pixel on a still clip
    # a stylization that follows the input's motion warps onto itself far better than a shuffled one
    assert warping_error(frames, frames) < 0.5 * warping_error(frames[::-1].copy(), frames)


def test_blur_lowers_warping_error_but_the_sharpness_probes_catch_it():
    frames = _clip(6, 128)
    noisy = np.clip(frames + np.random.default_rng(1).normal(0, 0.05, frames.shape), 0, 1).astype(np.float32)
    blurred = np.stack([cv2.GaussianBlur(frame, (9, 9), 3) for frame in noisy])
    sharp_report, blur_report = flicker_report(noisy, frames), flicker_report(blurred, frames)
    assert blur_report.warping_error < sharp_report.warping_error  # the metric rewards blur ...
    assert blur_report.sobel < 0.75 * sharp_report.sobel  # ... and the probes expose it
    assert blur_report.hf_energy < 0.5 * sharp_report.hf_energy
    assert "sobel" in blur_report.summary()
    assert sobel_sharpness(frames) > 0 and high_frequency_energy(frames) > 0


def test_metric_inputs_must_line_up():
    with pytest.raises(ValueError, match="same shape"):
        warping_error(_clip(3), _clip(4))
    with pytest.raises(ValueError, match="at least two"):
        warping_error(_clip(1), _clip(1))
