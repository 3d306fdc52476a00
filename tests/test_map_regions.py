"""Region labels of the map-error analysis on a scene whose regions are known."""

import numpy as np

from training.map_regions import REGIONS, map_error_by_region, region_labels


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
    assert abs(sum(s["share"] for s in stats.values()) - 1) < 1e-9
