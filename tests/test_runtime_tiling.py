"""Tile grid, blend weights, padding, and exactness of tiled against whole-image inference."""

import numpy as np
import pytest
import torch

from runtime.bundle import load_bundle
from runtime.errors import BackendError
from runtime.ort_backend import OrtBackend
from runtime.tiling import (
    TiledPipeline,
    axis_weights,
    balanced_tile,
    chunk_bounds,
    default_overlap,
    estimate_tile_for,
    make_grid,
    margin_for,
    min_overlap,
    pad_to,
    padded_size,
    tile_starts,
)
from training.metrics import psnr


@pytest.mark.parametrize(
    "length,tile,overlap,multiple",
    [
        (100, 32, 8, 2),
        (512, 512, 64, 2),
        (513, 128, 40, 1),
        (1000, 256, 80, 2),
        (34, 32, 30, 2),
        (64, 100, 8, 2),
    ],
)
def test_tile_starts_cover_flush_aligned(length, tile, overlap, multiple):
    starts = tile_starts(length, min(tile, length), overlap, multiple)
    size = min(tile, length)
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + size] = True
    assert covered.all()
    assert starts[0] == 0 and starts[-1] + size == length
    assert all(s % multiple == 0 for s in starts)
    assert all(b - a <= size - overlap for a, b in zip(starts, starts[1:]))
    assert starts == sorted(set(starts))


@pytest.mark.parametrize("args", [(101, 32, 8, 2), (100, 32, 7, 2), (100, 32, 32, 1)])
def test_tile_starts_rejects_bad_sizes(args):
    with pytest.raises(ValueError):
        tile_starts(*args)


@pytest.mark.parametrize("blend", ["cosine", "linear"])
@pytest.mark.parametrize(
    "length,tile,overlap,margin",
    [
        (200, 64, 40, 12),
        (130, 64, 24, 12),
        (64, 64, 24, 12),
        (301, 100, 60, 20),
        (90, 64, 60, 12),
    ],
)
def test_axis_weights_normalised_and_zero_near_inner_edges(blend, length, tile, overlap, margin):
    starts = tile_starts(length, min(tile, length), overlap)
    weights = axis_weights(starts, tile, length, margin, blend)
    size = min(tile, length)
    total = np.zeros(length)
    for s, w in zip(starts, weights):
        assert w.shape == (size,) and (w >= 0).all()
        total[s : s + size] += w
        if s > 0:
            assert np.all(w[:margin] == 0)
        if s + size < length:
            assert np.all(w[size - margin :] == 0)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_axis_weights_cosine_is_smooth_linear_is_straight():
    starts = tile_starts(200, 100, 60)
    cos = axis_weights(starts, 100, 200, 10, "cosine")[1]
    lin = axis_weights(starts, 100, 200, 10, "linear")[1]
    ramp_c, ramp_l = cos[10:50], lin[10:50]
    np.testing.assert_allclose(np.diff(ramp_l), np.diff(ramp_l)[0], atol=1e-6)
    assert np.diff(ramp_c)[0] < np.diff(ramp_l)[0] < np.diff(ramp_c)[len(ramp_c) // 2]


def test_axis_weights_rejects_overlap_below_twice_the_margin():
    starts = tile_starts(200, 64, 20)
    with pytest.raises(ValueError, match="exact tiling needs"):
        axis_weights(starts, 64, 200, 12)


def test_grid_weights_normalise_in_2d():
    grid = make_grid(150, 230, 64, 40, receptive_field=22, multiple=2)
    total = np.zeros((150, 230))
    for i, j, y, x in grid.tiles():
        total[y : y + grid.tile_h, x : x + grid.tile_w] += np.outer(grid.wy[i], grid.wx[j])
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


@pytest.mark.parametrize("rf,multiple", [(22, 2), (38, 2), (62, 2), (9, 1)])
def test_overlap_rules(rf, multiple):
    assert margin_for(rf) * 2 <= min_overlap(rf, multiple) < default_overlap(rf, multiple)
    assert min_overlap(rf, multiple) % multiple == 0 and default_overlap(rf, multiple) % multiple == 0
    with pytest.raises(ValueError, match="minimum for exact tiling"):
        make_grid(300, 300, 128, min_overlap(rf, multiple) - multiple, rf, multiple)


@pytest.mark.parametrize("length,chunk,multiple", [(1000, 512, 2), (512, 512, 2), (130, 64, 2), (7, 4, 1)])
def test_chunk_bounds_partition_aligned(length, chunk, multiple):
    bounds = chunk_bounds(length, chunk, multiple)
    assert bounds[0][0] == 0 and bounds[-1][1] == length
    assert all(b == c for (_, b), (c, _) in zip(bounds, bounds[1:]))
    assert all(a % multiple == 0 for a, _ in bounds)
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= multiple and max(sizes) <= chunk + multiple


@pytest.mark.parametrize(
    "h,w,multiple,minimum,expected",
    [
        (101, 157, 2, (1, 1), (102, 158)),
        (64, 64, 2, (1, 1), (64, 64)),
        (1, 1, 2, (1, 1), (2, 2)),
        (30, 200, 2, (64, 64), (64, 200)),
        (33, 35, 4, (1, 1), (36, 36)),
    ],
)
def test_padded_size(h, w, multiple, minimum, expected):
    assert padded_size(h, w, multiple, minimum) == expected


@pytest.mark.parametrize(
    "shape,target", [((5, 7, 3), (6, 8)), ((1, 1, 3), (2, 2)), ((4, 4), (4, 6)), ((3, 5, 3), (64, 64))]
)
def test_pad_to_keeps_original_and_reflects(shape, target):
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    padded = pad_to(image, *target)
    assert padded.shape[:2] == target
    np.testing.assert_array_equal(padded[: shape[0], : shape[1]], image)
    if shape[0] < target[0] < 2 * shape[0] and target[1] < 2 * shape[1]:
        np.testing.assert_array_equal(padded[shape[0], : shape[1]], image[shape[0] - 2])


def _whole_image_reference(model, image: np.ndarray):
    """Torch on the whole (padded) image: (3, H, W) output and (H, W) map."""
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))[None])
    with torch.no_grad():
        out, dmap = model(x)
    return out[0].numpy(), dmap[0, 0].numpy()


def _pipeline(folder, tile, overlap=None, tile_batch=3, estimate_tile=None, side=None):
    bundle = load_bundle(folder)
    backend = OrtBackend(bundle, threads=1)
    run = backend.run if side is None else side.wrap(backend.run)
    return TiledPipeline(
        run,
        bundle.receptive_field,
        bundle.size_multiple,
        bundle.uses_pooling,
        tile=tile,
        overlap=overlap,
        tile_batch=tile_batch,
        estimate_tile=estimate_tile,
    )


@pytest.mark.parametrize(
    "tile,overlap,estimate_tile",
    [(64, None, None), (72, None, None), (96, 40, None), (128, None, None), (64, None, 96), (128, 40, 64)],
)
def test_tiled_matches_whole_image(tiny_bundle, array_side, tile, overlap, estimate_tile):
    folder, model = tiny_bundle
    image = np.random.default_rng(tile).random((150, 262, 3), dtype=np.float32)
    pipe = _pipeline(folder, tile, overlap, estimate_tile=estimate_tile, side=array_side)
    assert len(pipe.grid("restore", 150, 262).tiles()) >= 6
    estimate_grid = pipe.grid("estimate", 150, 262)
    assert estimate_grid.tile_w == balanced_tile(
        262, estimate_tile or tile, pipe.overlap_for("estimate"), pipe.multiple
    )
    on_side = array_side.put(image)
    dmap = pipe.estimate(on_side)
    out = array_side.get(pipe.restore(on_side, dmap, pipe.condition_mean(dmap)))
    dmap = array_side.get(dmap)
    ref_out, ref_map = _whole_image_reference(model, image)
    assert psnr(dmap, ref_map) >= 50
    assert psnr(out, ref_out) >= 50


def test_concat_variant_tiles_exactly(concat_bundle, array_side):
    folder, model = concat_bundle
    image = np.random.default_rng(1).random((120, 200, 3), dtype=np.float32)
    pipe = _pipeline(folder, 64, side=array_side)
    assert not pipe.uses_pooling
    on_side = array_side.put(image)
    out = array_side.get(pipe.restore(on_side, pipe.estimate(on_side), None))
    ref_out, _ = _whole_image_reference(model, image)
    assert psnr(out, ref_out) >= 50


def test_per_tile_pooling_is_not_exact(tiny_bundle):
    """The check above can fail: pooling per tile instead of per image breaks exactness."""
    folder, model = tiny_bundle
    image = np.random.default_rng(2).random((150, 262, 3), dtype=np.float32)
    image[:, :100] *= 0.1  # make the halves' statistics differ
    bundle = load_bundle(folder)
    backend = OrtBackend(bundle, threads=1)

    def per_tile(graph, inputs):
        if graph == "restore":
            inputs = dict(
                inputs,
                cond_mean=backend.run("condition", {"defocus_map": inputs["defocus_map"]})["cond_mean"],
            )
        return backend.run(graph, inputs)

    pipe = TiledPipeline(per_tile, bundle.receptive_field, bundle.size_multiple, True, tile=64)
    dmap = pipe.estimate(image)
    out = pipe.restore(image, dmap, pipe.condition_mean(dmap))
    ref_out, _ = _whole_image_reference(model, image)
    assert psnr(out, ref_out) < 50


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(tile=63), "--tile 63 must be a positive multiple of 2"),
        (dict(tile=64, condition_chunk=33), "--tile 33 must be a positive multiple of 2"),
        (dict(tile=64, overlap=10), "--overlap 10 is below .* minimum for exact tiling of 'estimate'"),
        (dict(tile=48, estimate_tile=100), "--tile 48 must exceed the 'restore' overlap of 48 px"),
        (dict(tile=40), "--tile 40 must exceed the 'estimate' overlap of 58 px"),
        (dict(tile=64, estimate_tile=40), r"--tile 64 \(estimate tiles: 40 px\) must exceed the 'estimate'"),
        (dict(tile=64, tile_batch=0), "--tile-batch must be >= 1, got 0"),
    ],
)
def test_pipeline_is_the_one_check_of_tile_and_overlap(kwargs, message):
    """TiledPipeline itself refuses what cannot tile exactly (was: Deblurrer only, ValueError here)."""
    rf = {"estimate": 40, "restore": 30}
    with pytest.raises(BackendError, match=message):
        TiledPipeline(lambda graph, inputs: {}, rf, 2, True, **kwargs)


@pytest.mark.parametrize("chunk,calls", [(None, 4), (64, 12), (200, 1)])
def test_condition_chunk_is_explicit(chunk, calls):
    """``cond_mean`` pools over chunks of ``condition_chunk`` (default: the tile), pixel-weighted."""
    seen = []

    def run(graph, inputs):
        seen.append(inputs["defocus_map"].shape[2:])
        return {"cond_mean": inputs["defocus_map"].mean(axis=(2, 3))}

    pipe = TiledPipeline(run, {"estimate": 40, "restore": 30}, 2, True, tile=128, condition_chunk=chunk)
    dmap = np.random.default_rng(3).random((150, 200), dtype=np.float32)
    np.testing.assert_allclose(pipe.condition_mean(dmap), [[dmap.mean()]], rtol=1e-5)
    assert len(seen) == calls and all(min(s) >= (chunk or 128) // 2 - 2 for s in seen)


@pytest.mark.parametrize(
    "length,tile,overlap,multiple",
    [
        (1080, 1024, 112, 2),
        (3840, 1024, 112, 2),
        (2160, 1024, 112, 2),
        (1024, 1024, 112, 2),
        (1030, 512, 80, 2),
        (301, 100, 60, 1),
        (64, 512, 40, 2),
    ],
)
def test_balanced_tile_keeps_the_count_and_computes_less(length, tile, overlap, multiple):
    size = balanced_tile(length, tile, overlap, multiple)
    fixed = tile_starts(length, min(tile, length), overlap, multiple)
    starts = tile_starts(length, size, overlap, multiple)
    assert size <= min(tile, length) and size % multiple == 0
    assert len(starts) == len(fixed)
    assert len(starts) * size <= len(fixed) * min(tile, length)
    assert len(starts) * size <= length + (len(starts) - 1) * overlap + len(starts) * multiple


def test_balanced_tile_1080p_in_1024_tiles():
    # Flush fixed tiles would compute 2 x 1024 rows for 1080; balanced ones 2 x 596.
    assert balanced_tile(1080, 1024, 112, 2) == 596


@pytest.mark.parametrize(
    "tile,multiple,max_side,expected",
    [
        (1024, 2, None, 2048),
        (512, 2, 1024, 1024),
        (512, 2, 700, 700),
        (512, 8, 701, 696),
        (1001, 8, None, 2008),
        (64, 2, 64, 64),
    ],
)
def test_estimate_tile_is_larger_aligned_and_capped(tile, multiple, max_side, expected):
    assert estimate_tile_for(tile, multiple, max_side) == expected
