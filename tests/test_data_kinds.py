"""Rendered items wholly in focus and uniformly blurred (SyntheticDefocusDataset)."""

import numpy as np
import pytest
import torch

from training.config import ConfigError, from_dict
from training.data import SkimagePhotos, SyntheticDefocusDataset
from training.presets import MAP_RADIUS_SCALE_PX


def _items(**kwargs):
    ds = SyntheticDefocusDataset([SkimagePhotos()], crop=32, length=6, seed=4, **kwargs)
    return [ds[i] for i in range(len(ds))]


def test_in_focus_items_have_a_zero_map_and_only_noise():
    for item in _items(in_focus_fraction=1.0, noise=False):
        assert torch.count_nonzero(item["defocus_map"]) == 0
        torch.testing.assert_close(item["blurry"], item["sharp"], atol=2e-6, rtol=0)


@pytest.mark.parametrize("max_radius", [0.3, 6.0])
def test_uniform_items_have_one_radius_everywhere(max_radius):
    radii = []
    for item in _items(uniform_fraction=1.0, max_radius_px=max_radius):
        dmap = item["defocus_map"].numpy() * MAP_RADIUS_SCALE_PX
        np.testing.assert_allclose(dmap, dmap.flat[0], rtol=1e-5)
        assert min(0.5, max_radius) - 1e-5 <= dmap.flat[0] <= max_radius + 1e-5
        radii.append(float(dmap.flat[0]))
    if max_radius > 0.5:  # a range to draw from
        assert len(set(radii)) == len(radii)
        item = _items(uniform_fraction=1.0, max_radius_px=max_radius, noise=False)[0]
        assert (item["blurry"] - item["sharp"]).abs().mean() > 1e-3


def test_without_the_new_kinds_the_stream_is_unchanged():
    """Fractions of 0 draw nothing extra from the generator: old runs resume exactly."""
    ds = SyntheticDefocusDataset([SkimagePhotos()], crop=32, length=2, seed=4)
    mixed = SyntheticDefocusDataset([SkimagePhotos()], crop=32, length=2, seed=4, in_focus_fraction=0.5)
    assert torch.equal(
        ds[0]["blurry"], SyntheticDefocusDataset([SkimagePhotos()], crop=32, length=2, seed=4)[0]["blurry"]
    )
    assert any(not torch.equal(ds[i]["defocus_map"], mixed[i]["defocus_map"]) for i in range(2))


def test_mixed_fractions_give_every_kind():
    items = _items(in_focus_fraction=0.4, uniform_fraction=0.4) + [
        SyntheticDefocusDataset(
            [SkimagePhotos()], crop=32, length=40, seed=5, in_focus_fraction=0.4, uniform_fraction=0.4
        )[i]
        for i in range(20)
    ]
    zero = sum(bool(torch.count_nonzero(i["defocus_map"]) == 0) for i in items)
    flat = sum(bool(i["defocus_map"].std() < 1e-6 and i["defocus_map"].max() > 0) for i in items)
    assert zero > 0 and flat > 0 and zero + flat < len(items)


@pytest.mark.parametrize("fractions", [(-0.1, 0.0), (0.6, 0.5)])
def test_bad_fractions_are_refused(fractions):
    with pytest.raises(ValueError, match="in_focus_fraction and uniform_fraction"):
        SyntheticDefocusDataset(
            [SkimagePhotos()], in_focus_fraction=fractions[0], uniform_fraction=fractions[1]
        )
    with pytest.raises(ConfigError, match="in_focus_fraction and uniform_fraction"):
        from_dict(
            {
                "data": {"in_focus_fraction": fractions[0], "uniform_fraction": fractions[1]},
                "stage": [{"kind": "joint", "steps": 1}],
            }
        )
