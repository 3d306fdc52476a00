"""Self-ensemble: the transforms, and ``Deblurrer(self_ensemble=N)`` against PyTorch."""

import numpy as np
import pytest
import torch

from runtime import Deblurrer
from runtime.ensemble import MAP_QUANTILE, SIZES, TRANSFORMS, combine_maps
from runtime.errors import BackendError

RNG = np.random.default_rng(5)

#: The dihedral group written with NumPy's own rotations, on (H, W, ...) arrays, in the
#: order of ``TRANSFORMS``: each prefix of 1, 2 and 4 is a group.
REFERENCE = [
    lambda a: a,
    lambda a: a.swapaxes(0, 1),
    lambda a: np.rot90(a, 2),
    lambda a: np.rot90(a.swapaxes(0, 1), 2),
    lambda a: a[:, ::-1],
    lambda a: a[::-1],
    lambda a: np.rot90(a, 1),
    lambda a: np.rot90(a, 3),
]


@pytest.mark.parametrize("shape", [(5, 5), (4, 7), (6, 3, 2)])
@pytest.mark.parametrize("k", range(8))
def test_transform_matches_reference_and_undoes(shape, k):
    array = RNG.random(shape)
    transform = TRANSFORMS[k]
    np.testing.assert_array_equal(transform.apply(array), REFERENCE[k](array))
    np.testing.assert_array_equal(transform.undo(transform.apply(array)), array)


def test_transforms_are_eight_distinct_and_prefixes_are_groups():
    array = RNG.random((4, 4))
    images = [t.apply(array).tobytes() for t in TRANSFORMS]
    assert len(set(images)) == 8
    for size in (2, 4):
        group = set(images[:size])
        assert {
            a.apply(b.apply(array)).tobytes() for a in TRANSFORMS[:size] for b in TRANSFORMS[:size]
        } == group


def test_transform_on_channel_first_axes():
    chw = RNG.random((3, 4, 6))
    for transform in TRANSFORMS:
        expected = transform.apply(chw.transpose(1, 2, 0)).transpose(2, 0, 1)
        np.testing.assert_array_equal(transform.apply(chw, axes=(1, 2)), expected)


def _torch_ensemble(model, image: np.ndarray, size: int):
    """The self-ensemble written in PyTorch over the first ``size`` of ``REFERENCE``: every
    copy restored from the ``MAP_QUANTILE`` of the copies' maps (``torch.quantile``), the
    outputs' clipped mean and that map."""
    x = lambda a: torch.from_numpy(np.ascontiguousarray(a).transpose(2, 0, 1).copy())[None]  # noqa: E731
    maps = []
    with torch.no_grad():
        for forward in REFERENCE[:size]:
            maps.append(_inverse(forward, model(x(forward(image)), estimate_only=True)[1][0, 0].numpy()))
        combined = torch.quantile(torch.from_numpy(np.stack(maps)), MAP_QUANTILE, dim=0).numpy()
        outputs = []
        for forward in REFERENCE[:size]:
            given = torch.from_numpy(np.ascontiguousarray(forward(combined)))[None, None]
            out = model(x(forward(image)), defocus_map=given)[0]
            outputs.append(_inverse(forward, out[0].numpy().transpose(1, 2, 0)))
    return np.clip(np.mean(outputs, axis=0), 0, 1), combined


def _inverse(forward, array: np.ndarray) -> np.ndarray:
    """The element of ``REFERENCE`` that undoes ``forward``, applied to ``array``."""
    probe = np.arange(16).reshape(4, 4)
    inverse = next(g for g in REFERENCE if np.array_equal(g(forward(probe)), probe))
    return inverse(array)


@pytest.mark.parametrize("size", SIZES)
def test_ensemble_matches_pytorch(tiny_bundle, size):
    model = tiny_bundle[1]
    image = RNG.random((24, 40, 3), dtype=np.float32)
    expected, expected_map = _torch_ensemble(model, image, size)
    out, dmap = Deblurrer(tiny_bundle[0], precision="fp32", threads=1, self_ensemble=size).run(image)
    np.testing.assert_allclose(out, expected, atol=1e-4)
    np.testing.assert_allclose(dmap, expected_map, atol=1e-4, rtol=1e-4)
    if size > 1:  # the passes differ, so the ensemble is not the single pass
        single, _ = Deblurrer(tiny_bundle[0], threads=1).run(image)
        assert np.abs(single - out).max() > 1e-2


@pytest.mark.parametrize("size", [2, 4, 8])
def test_ensemble_is_equivariant_to_its_transforms(tiny_bundle, size):
    deblurrer = Deblurrer(tiny_bundle[0], precision="fp32", threads=1, self_ensemble=size)
    image = RNG.random((20, 28, 3), dtype=np.float32)
    out, dmap = deblurrer.run(image)
    for forward in REFERENCE[1:size]:
        moved_out, moved_map = deblurrer.run(np.ascontiguousarray(forward(image)))
        np.testing.assert_allclose(moved_out, forward(out), atol=1e-5)
        np.testing.assert_allclose(moved_map, forward(dmap), atol=1e-5)


def test_ensemble_tiled_equals_whole_on_odd_sizes(tiny_bundle):
    image = RNG.integers(0, 65536, (75, 131, 3)).astype(np.uint16)
    whole, whole_map = Deblurrer(tiny_bundle[0], precision="fp32", threads=1, self_ensemble=8, tile=256).run(
        image
    )
    deblurrer = Deblurrer(tiny_bundle[0], precision="fp32", threads=1, self_ensemble=8, tile=64)
    finished = []
    tiled, tiled_map = deblurrer.run(image, progress=finished.append)
    assert tiled.dtype == np.uint16 and tiled.shape == image.shape
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1
    np.testing.assert_allclose(tiled_map, whole_map, atol=1e-5)
    single = Deblurrer(tiny_bundle[0], threads=1, tile=64).count_tiles(75, 131)
    assert deblurrer.count_tiles(75, 131) == sum(finished) == 8 * single > 8
    finished.clear()
    deblurrer.run(image, defocus_map=tiled_map, progress=finished.append)
    assert deblurrer.count_tiles(75, 131, with_map=True) == sum(finished) < 8 * single


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_ensemble_with_a_given_map(tiny_bundle, scale):
    image = RNG.random((16, 22, 3), dtype=np.float32)
    given = RNG.random((16, 22), dtype=np.float32)
    kept = given.copy()
    _, dmap = Deblurrer(tiny_bundle[0], threads=1, self_ensemble=8).run(image, scale, given)
    np.testing.assert_allclose(dmap, scale * kept, rtol=1e-6)
    np.testing.assert_array_equal(given, kept)


@pytest.mark.parametrize("size", [0, 3, 16])
def test_bad_ensemble_size_is_one_clear_error(tiny_bundle, size):
    with pytest.raises(BackendError, match=f"self-ensemble must be one of 1, 2, 4, 8, got {size}"):
        Deblurrer(tiny_bundle[0], threads=1, self_ensemble=size)


@pytest.mark.parametrize(
    "values, quantile, expected",
    [
        ([3.0, 1.0], 0.75, 2.5),  # 1 + 0.75 x (3 - 1)
        ([0.0, 4.0, 2.0, 8.0], 0.75, 5.0),  # sorted 0 2 4 8: position 2.25
        ([7.0, 0.0, 6.0, 1.0, 5.0, 2.0, 4.0, 3.0], 0.75, 5.25),  # position 5.25
        ([7.0, 0.0, 6.0, 1.0, 5.0, 2.0, 4.0, 3.0], 1.0, 7.0),
        ([7.0, 0.0, 6.0, 1.0, 5.0, 2.0, 4.0, 3.0], 0.5, 3.5),
    ],
)
def test_combine_maps_is_the_linear_quantile_per_pixel(values, quantile, expected):
    maps = [np.full((3, 5), v, dtype=np.float32) for v in values]
    maps[0][1, 2] = 100.0  # one pixel with its own order: its quantile moves, no other's
    combined = combine_maps(maps, quantile)
    assert combined.dtype == np.float32 and combined.shape == (3, 5)
    others = np.ones((3, 5), bool)
    others[1, 2] = False
    np.testing.assert_allclose(combined[others], expected, rtol=1e-6)
    assert combined[1, 2] >= expected


def test_combine_maps_in_bands_equals_sorting_the_whole_stack(array_side):
    maps = [RNG.random((600, 7), dtype=np.float32) for _ in range(8)]  # more rows than one band
    ordered = np.sort(np.stack(maps), axis=0)
    position = MAP_QUANTILE * 7
    low = int(position)
    expected = ordered[low] + (position - low) * (ordered[low + 1] - ordered[low])
    combined = combine_maps([array_side.put(m) for m in maps])
    assert isinstance(combined, array_side.xp.ndarray) and combined.dtype == np.float32
    np.testing.assert_allclose(array_side.get(combined), expected, rtol=1e-6)


def test_combine_maps_of_one_map_is_that_map():
    only = RNG.random((4, 4), dtype=np.float32)
    assert combine_maps([only]) is only


@pytest.mark.parametrize("size", [2, 8])
def test_ensemble_map_is_the_one_every_copy_was_restored_from(tiny_bundle, size):
    deblurrer = Deblurrer(tiny_bundle[0], precision="fp32", threads=1, self_ensemble=size)
    image = RNG.random((24, 32, 3), dtype=np.float32)  # a multiple of the size multiple: no padding
    out, dmap = deblurrer.run(image)
    again, used = deblurrer.run(image, defocus_map=dmap)
    np.testing.assert_allclose(again, out, atol=1e-5)
    np.testing.assert_array_equal(used, dmap)
