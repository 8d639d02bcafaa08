"""Mask outlines (VACE layout_track) drawn by morphology match OpenCV's findContours + drawContours, the way VACE's
LayoutMaskAnnotator draws them: the GPU path (torch, run here on the CPU) and the CPU path (OpenCV flood fill)."""

import cv2
import numpy as np
import pytest
import torch

from streamvace.annotators.mask_outline import draw_mask_contours, fill_holes, outline_bands

HEIGHT, WIDTH = 120, 208


def vace_outline(mask: np.ndarray, thickness: int = 3) -> np.ndarray:
    """VACE's LayoutMaskAnnotator drawing: external contours, CHAIN_APPROX_SIMPLE, drawContours(thickness)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return cv2.drawContours(np.zeros(mask.shape, np.uint8), contours, -1, 1, thickness=thickness) > 0


def smooth_masks() -> np.ndarray:
    """Object-like masks: blurred-noise blobs, a moving ellipse, a box on the frame border, a ring with an island."""
    masks = []
    for seed in range(6):
        noise = np.random.default_rng(seed).normal(size=(HEIGHT, WIDTH)).astype(np.float32)
        blurred = cv2.GaussianBlur(noise, (0, 0), 8)
        masks.append(blurred > 0.3 * blurred.std())
    for t in range(3):
        masks.append(cv2.ellipse(np.zeros((HEIGHT, WIDTH), np.uint8), (50 + 23 * t, 60), (40, 22), 17 * t, 0, 360,
                                 1, -1) > 0)
    box = np.zeros((HEIGHT, WIDTH), bool)
    box[0:50, 150:] = True
    ring = cv2.circle(np.zeros((HEIGHT, WIDTH), np.uint8), (70, 60), 45, 1, -1)
    ring = cv2.circle(ring, (70, 60), 25, 0, -1)
    ring = cv2.circle(ring, (70, 60), 8, 1, -1)  # an island inside the hole: not outlined either (RETR_EXTERNAL)
    return np.stack(masks + [box | (ring > 0)])


def on_band_edge(pixels: np.ndarray, band: np.ndarray) -> np.ndarray:
    """Which of `pixels` [T, H, W] touch (8-neighbourhood) both a band pixel and a non-band pixel."""
    kernel = np.ones((3, 3), np.uint8)
    near_band = np.stack([cv2.dilate(frame.astype(np.uint8), kernel) > 0 for frame in band])
    near_outside = np.stack([cv2.dilate((~frame).astype(np.uint8), kernel) > 0 for frame in band])
    return pixels & near_band & near_outside


@pytest.fixture(scope="module")
def masks():
    return smooth_masks()


def both_paths(masks, thickness):
    """Bands from the GPU algorithm (torch, run on the CPU) and from the CPU path of draw_mask_contours."""
    gpu = outline_bands(torch.from_numpy(masks), thickness).numpy()
    images = draw_mask_contours(torch.from_numpy(masks).float()[None], thickness=thickness)
    return gpu, (images[:, 0] == 0).numpy()


# (thickness, share of outline pixels that may differ): OpenCV joins vertices with fixed-point polygon lines whose
# rounding depends on the thickness; at 1, 3 (VACE), 4 and 5 that only shows on single pixels of the band's edge
# beside long straight diagonal runs; at 7 OpenCV's band is up to 2 px wider there.
TOLERANCE = [(1, 1e-4), (3, 1e-4), (4, 1e-4), (5, 1e-4), (2, 0.005), (7, 0.06)]


@pytest.mark.parametrize("thickness, tolerance", TOLERANCE)
def test_outlines_match_opencv_drawcontours(masks, thickness, tolerance):
    expected = np.stack([vace_outline(mask, thickness) for mask in masks])
    for band in both_paths(masks, thickness):
        wrong = band ^ expected
        assert wrong.sum() <= tolerance * expected.sum(), f"{wrong.sum()} of {expected.sum()} outline pixels differ"
        if tolerance < 0.01:
            assert np.array_equal(on_band_edge(wrong, expected), wrong), "a difference away from the band's edge"


def test_box_ring_and_island_are_exact(masks):
    expected = np.stack([vace_outline(mask) for mask in masks[-1:]])
    gpu, cpu = both_paths(masks[-1:], 3)
    assert np.array_equal(gpu, expected) and np.array_equal(cpu, expected)
    assert not expected[0, 60, 70] and not expected[0, 60, 70 - 25], "the hole and the island are not outlined"
    assert expected[0, 60, 70 - 45] and expected[0, 0, 150:].all()  # outer edge; a box edge on the frame border
    # thickness 3 paints 5 px centred on the contour pixels (row 49, the box's last row)
    assert expected[0, 47:52, 180].all() and not expected[0, 46, 180] and not expected[0, 52, 180]


def test_colour_and_background_are_exact(masks):
    images = draw_mask_contours(torch.from_numpy(masks[:2]).float()[None], color=(0.2, 0.4, 1.0))
    band = torch.from_numpy(np.stack([vace_outline(mask) for mask in masks[:2]]))
    colour = torch.tensor([51, 102, 255]) / 255.0
    assert torch.equal(images.permute(0, 2, 3, 1)[band], colour.expand(int(band.sum()), 3))
    assert (images.permute(0, 2, 3, 1)[~band] == 1.0).all()


def flood_filled(mask: np.ndarray) -> np.ndarray:
    """Holes filled by OpenCV's flood fill of the border-connected background (4-connected)."""
    padded = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    cv2.floodFill(padded, None, (0, 0), 2, flags=4)
    return padded[1:-1, 1:-1] != 2


def serpentine(height: int, width: int) -> np.ndarray:
    """Walls every other row with the gap on alternating sides: one corridor of about height * width / 2 pixels."""
    walls = np.zeros((height, width), bool)
    walls[2:height - 2, [0, -1]] = True
    for row in range(2, height - 2, 2):
        walls[row, 1:-1] = True
        gap = slice(1, 3) if (row // 2) % 2 else slice(width - 3, width - 1)
        walls[row, gap] = False
    return walls


def test_gpu_hole_filling_equals_a_flood_fill_on_hard_masks(masks):
    maze = cv2.GaussianBlur(np.random.default_rng(0).normal(size=(HEIGHT, WIDTH)).astype(np.float32), (0, 0), 3) > 0
    noise = np.random.default_rng(1).random((HEIGHT, WIDTH)) > 0.6  # near the percolation threshold
    hard = np.concatenate([masks, np.stack([maze, noise, serpentine(HEIGHT, WIDTH)])])
    expected = np.stack([flood_filled(mask) for mask in hard])
    assert np.array_equal(fill_holes(torch.from_numpy(hard)).numpy(), expected)
    # pointer jumping needs few iterations even for a corridor of ~12 k pixels; one is not enough
    assert not np.array_equal(fill_holes(torch.from_numpy(hard[-1:]), iterations=1).numpy(), expected[-1:])


def test_noisy_masks_give_the_same_band_on_both_paths():
    noise = np.random.default_rng(7).random((2, HEIGHT, WIDTH)) > np.array([0.6, 0.8])[:, None, None]
    gpu, cpu = both_paths(noise, 3)
    assert np.array_equal(gpu, cpu)


def test_bad_thickness_is_refused():
    with pytest.raises(ValueError, match="at least 1 pixel"):
        draw_mask_contours(torch.zeros(1, 1, 8, 8), thickness=0)
