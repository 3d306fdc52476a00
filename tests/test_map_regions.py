"""Region labels of the map-error analysis on a scene whose regions are known."""

import cv2
import numpy as np

from training.map_regions import REGIONS, map_error_by_region, occlusion_sides, region_labels


def _scene(size: int = 96):
    """Left half: flat grey. Right half: a fine random texture. A horizontal bright bar
    (an edge) across the flat half, and a depth jump down the middle column."""
    rng = np.random.default_rng(0)
    sharp = np.full((size, size, 3), 0.5, np.float32)
    sharp[:, size // 2 :] = rng.random((size, size // 2, 1)).astype(np.float32)
    sharp[20:30, 5:35] = 1.0
    true_map = np.zeros((size, size), np.float32)
    true_map[:, size // 2 :] = 0.6
    return sharp, true_map


def test_region_labels_of_a_known_scene():
    sharp, true_map = _scene()
    labels = region_labels(sharp, true_map)
    assert labels.shape == true_map.shape and labels.dtype == np.uint8
    assert labels[70, 10] == REGIONS.index("flat")
    assert labels[20, 20] == REGIONS.index("edge")  # the bar's upper border
    assert labels[60, 80] == REGIONS.index("texture")
    assert (labels[:, 44:52] == REGIONS.index("occlusion")).all()
    assert labels[60, 56] != REGIONS.index("occlusion")


def test_map_error_by_region_against_numpy():
    sharp, true_map = _scene()
    estimate = true_map + np.linspace(-0.2, 0.2, true_map.size, dtype=np.float32).reshape(true_map.shape)
    stats = map_error_by_region(sharp, true_map, estimate)
    labels = region_labels(sharp, true_map)
    error = estimate - true_map
    for index, name in enumerate(REGIONS):
        mask = labels == index
        assert stats[name]["share"] == mask.mean()
        np.testing.assert_allclose(stats[name]["mae"], np.abs(error[mask]).mean(), rtol=1e-6)
        np.testing.assert_allclose(stats[name]["bias"], error[mask].mean(), rtol=1e-5, atol=1e-7)
    assert abs(sum(stats[r]["share"] for r in REGIONS) - 1) < 1e-9


def test_occlusion_sides_split_the_band_at_the_depth_edge():
    """The jump lies between columns 47 (map 0) and 48 (0.6): the band's columns 48-52
    are the blurrier layer, 44-47 the sharper one. A map blurred across the edge reads
    the first too low and the second too high."""
    sharp, true_map = _scene()
    labels = region_labels(sharp, true_map)
    sides = occlusion_sides(labels, true_map)
    columns = {side: np.flatnonzero(mask.any(axis=0)) for side, mask in sides.items()}
    assert list(columns["blurrier"]) == list(range(48, 53)) and list(columns["sharper"]) == list(
        range(44, 48)
    )
    assert (sides["blurrier"] | sides["sharper"]).sum() == (labels == REGIONS.index("occlusion")).sum()
    smeared = cv2.blur(true_map, (9, 1), borderType=cv2.BORDER_REPLICATE)
    stats = map_error_by_region(sharp, true_map, smeared)
    error = smeared.astype(np.float64) - true_map
    for side, mask in sides.items():
        np.testing.assert_allclose(stats[f"occlusion_{side}"]["bias"], error[mask].mean(), rtol=1e-6)
        np.testing.assert_allclose(stats[f"occlusion_{side}"]["mae"], np.abs(error[mask]).mean(), rtol=1e-6)
    assert stats["occlusion_blurrier"]["bias"] < -0.1 < 0.1 < stats["occlusion_sharper"]["bias"]


def test_no_depth_edge_no_sides():
    sharp, _ = _scene()
    stats = map_error_by_region(sharp, np.full((96, 96), 0.3, np.float32), np.zeros((96, 96), np.float32))
    assert not {"occlusion", "occlusion_blurrier", "occlusion_sharper"} & set(stats)
