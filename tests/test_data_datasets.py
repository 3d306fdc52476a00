"""Datasets, sources and the validation set (training/data/datasets.py, sources.py, validation.py)."""

import logging
import signal

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from training.data import (
    TRAIN_PHOTOS,
    VALIDATION_PHOTOS,
    DataError,
    DEDDataset,
    ImageFolderSource,
    PairDataset,
    SkimagePhotos,
    SyntheticDefocusDataset,
    build_validation_set,
    read_image,
    read_radius_png,
    worker_init_fn,
    write_radius_png,
)
from training.data.datasets import dihedral
from training.presets import MAP_RADIUS_SCALE_PX

KEYS = {"blurry", "sharp", "defocus_map", "has_map"}


def _write_rgb(path, rgb, dtype=np.uint8):
    """Write an RGB float image [0, 1] as an 8- or 16-bit file (OpenCV wants BGR)."""
    peak = np.iinfo(dtype).max
    assert cv2.imwrite(str(path), np.rint(rgb[..., ::-1] * peak).astype(dtype))


def _pattern(height, width, seed):
    return np.random.default_rng(seed).random((height, width, 3)).astype(np.float32)


def _make_ded(root, stems=("a", "b", "c"), size=(40, 48)):
    for folder in ("blurry", "sharp", "defocus_map"):
        (root / folder).mkdir(parents=True)
    radii = {}
    for k, stem in enumerate(stems):
        image = _pattern(*size, k)
        _write_rgb(root / "blurry" / f"{stem}.png", image)
        _write_rgb(root / "sharp" / f"{stem}.png", image, np.uint16)
        radii[stem] = np.rint(image[..., 0] * 9000) / 1000  # 0.001 px steps up to 9 px
        write_radius_png(root / "defocus_map" / f"{stem}.png", radii[stem])
    return radii


def _make_pairs(root, blurry="blurry", sharp="sharp", stems=("x", "y")):
    (root / blurry).mkdir(parents=True)
    (root / sharp).mkdir(parents=True)
    for k, stem in enumerate(stems):
        _write_rgb(root / blurry / f"{stem}.png", _pattern(24, 32, k))
        _write_rgb(root / sharp / f"{stem}.png", _pattern(24, 32, k + 10))


def _assert_item(item, crop, has_map):
    assert set(item) == KEYS
    for key, channels in (("blurry", 3), ("sharp", 3), ("defocus_map", 1)):
        assert item[key].shape == (channels, crop, crop) and item[key].dtype == torch.float32
        assert item[key].is_contiguous()
    assert 0 <= item["blurry"].min() and item["blurry"].max() <= 1
    assert 0 <= item["sharp"].min() and item["sharp"].max() <= 1
    assert item["defocus_map"].min() >= 0
    assert item["has_map"].dtype == torch.bool and item["has_map"].item() is has_map


class TestSynthetic:
    @pytest.mark.parametrize("crop", [32, 48])
    @pytest.mark.parametrize("fraction", [0.0, 1.0])
    def test_item_shapes_and_ranges(self, crop, fraction):
        ds = SyntheticDefocusDataset(
            [SkimagePhotos()], crop=crop, length=4, max_radius_px=6.0, dead_leaves_fraction=fraction
        )
        for i in range(len(ds)):
            item = ds[i]
            _assert_item(item, crop, True)
            assert item["defocus_map"].max() <= 6.0 / MAP_RADIUS_SCALE_PX + 1e-6

    def test_deterministic_per_seed_and_index(self):
        make = lambda seed: SyntheticDefocusDataset([SkimagePhotos()], crop=32, length=8, seed=seed)  # noqa: E731
        first, again, other = make(0), make(0), make(1)
        for i in (0, 5):
            a, b, c = first[i], again[i], other[i]
            for key in ("blurry", "sharp", "defocus_map"):
                assert torch.equal(a[key], b[key])
            assert not torch.equal(a["blurry"], c["blurry"])
        assert not torch.equal(first[0]["sharp"], first[1]["sharp"])

    def test_loader_workers_match_serial(self):
        ds = SyntheticDefocusDataset([SkimagePhotos()], crop=32, length=4, seed=3)
        # spawn: the test process has onnxruntime loaded (other test modules import it),
        # and its background threads make fork-started workers hang.
        loader = DataLoader(
            ds, batch_size=2, num_workers=2, worker_init_fn=worker_init_fn, multiprocessing_context="spawn"
        )
        # The loader leaves torch's SIGCHLD handler installed in this process; with OpenVINO
        # loaded (benchmark and runtime tests), a later subprocess's exit then crashed pytest
        # with SIGSEGV. Restore the handler this process had.
        previous = signal.getsignal(signal.SIGCHLD)
        try:
            batches = list(loader)
        finally:
            signal.signal(signal.SIGCHLD, previous)
        assert batches[0]["blurry"].shape == (2, 3, 32, 32) and batches[0]["has_map"].shape == (2,)
        assert torch.equal(batches[1]["blurry"][1], ds[3]["blurry"])

    def test_map_matches_blur(self):
        # Without noise, pixels whose whole neighbourhood is in focus are untouched.
        ds = SyntheticDefocusDataset([SkimagePhotos()], crop=48, length=40, noise=False)
        checked = 0
        for i in range(len(ds)):
            item = ds[i]
            sharp_zone = cv2.erode(
                (item["defocus_map"][0].numpy() < 0.02).astype(np.uint8), np.ones((25, 25), np.uint8)
            ).astype(bool)
            if sharp_zone.any():
                diff = (item["blurry"] - item["sharp"]).abs().amax(0).numpy()
                assert diff[sharp_zone].max() < 0.05
                checked += 1
        assert checked > 0

    def test_index_out_of_range(self):
        ds = SyntheticDefocusDataset(dead_leaves_fraction=1.0, crop=16, length=2)
        with pytest.raises(IndexError):
            ds[2]

    @pytest.mark.parametrize(
        "kwargs, error, message",
        [
            ({}, DataError, "no sharp images: give sources or set dead_leaves_fraction=1"),
            ({"psf": "box", "dead_leaves_fraction": 1.0}, ValueError, "unknown psf 'box'"),
            ({"dead_leaves_fraction": 1.5}, ValueError, "dead_leaves_fraction must be in"),
        ],
    )
    def test_bad_arguments(self, kwargs, error, message):
        with pytest.raises(error, match=message):
            SyntheticDefocusDataset(**kwargs)

    def test_small_images_are_upscaled_to_the_crop(self, tmp_path):
        _write_rgb(tmp_path / "tiny.png", _pattern(12, 20, 0))
        ds = SyntheticDefocusDataset(
            [ImageFolderSource(tmp_path)], crop=32, length=2, dead_leaves_fraction=0.0
        )
        _assert_item(ds[0], 32, True)


class TestDihedral:
    def test_all_eight_and_aligned(self):
        image = _pattern(6, 6, 0)
        seen = set()
        for seed in range(64):
            out_image, out_plane = dihedral(np.random.default_rng(seed), [image, image[..., 0]])
            np.testing.assert_array_equal(out_image[..., 0], out_plane)
            seen.add(out_image.tobytes())
        reference = {
            np.ascontiguousarray(t).tobytes()
            for k in range(4)
            for t in (np.rot90(image, k), np.rot90(image, k)[:, ::-1])
        }
        assert seen == reference

    def test_ded_triplets_stay_aligned(self, tmp_path):
        # blurry == sharp and map == 9 * red channel in every file: any crop,
        # flip or turn applied to one but not the others breaks these equalities.
        _make_ded(tmp_path)
        ds = DEDDataset(tmp_path, crop=24, length=12)
        for i in range(len(ds)):
            item = ds[i]
            torch.testing.assert_close(item["blurry"], item["sharp"], atol=1 / 255, rtol=0)
            torch.testing.assert_close(
                item["defocus_map"][0] * MAP_RADIUS_SCALE_PX, item["sharp"][0] * 9, atol=0.05, rtol=0
            )


class TestDED:
    def test_reads_triplets_exactly(self, tmp_path):
        radii = _make_ded(tmp_path)
        ds = DEDDataset(tmp_path, crop=None, augment=False)
        assert len(ds) == 3 and ds.skipped == []
        item = ds[1]
        assert item["blurry"].shape == (3, 40, 48) and item["has_map"].item() is True
        expected = cv2.imread(str(tmp_path / "blurry" / "b.png"))[..., ::-1].astype(np.float32) / 255
        np.testing.assert_allclose(item["blurry"].permute(1, 2, 0).numpy(), expected, atol=1e-7)
        np.testing.assert_allclose(
            item["defocus_map"][0].numpy(), radii["b"] / MAP_RADIUS_SCALE_PX, atol=1e-6
        )

    @pytest.mark.parametrize("crop", [16, 40, 64])
    def test_crop_sizes_including_reflect_pad(self, tmp_path, crop):
        _make_ded(tmp_path)
        _assert_item(DEDDataset(tmp_path, crop=crop)[0], crop, True)

    def test_deterministic_and_length(self, tmp_path):
        _make_ded(tmp_path)
        ds = DEDDataset(tmp_path, crop=16, seed=4, length=10)
        assert len(ds) == 10
        assert torch.equal(ds[7]["blurry"], DEDDataset(tmp_path, crop=16, seed=4, length=10)[7]["blurry"])
        assert not torch.equal(ds[0]["blurry"], ds[3]["blurry"])  # same triplet, another crop

    def test_map_scale_override(self, tmp_path):
        radii = _make_ded(tmp_path)
        item = DEDDataset(tmp_path, crop=None, augment=False, map_scale=500.0)[0]
        np.testing.assert_allclose(
            item["defocus_map"][0].numpy(), 2 * radii["a"] / MAP_RADIUS_SCALE_PX, atol=1e-6
        )

    def test_unreadable_file_skipped_with_count(self, tmp_path, caplog):
        _make_ded(tmp_path)
        (tmp_path / "sharp" / "b.png").write_bytes(b"not a png")
        with caplog.at_level(logging.WARNING):
            ds = DEDDataset(tmp_path, crop=16)
        assert len(ds) == 2 and [p.name for p in ds.skipped] == ["b.png"]
        assert f"skipped 1 unreadable file(s) under {tmp_path}" in caplog.text

    def test_truncated_file_falls_back_to_next(self, tmp_path, caplog):
        _make_ded(tmp_path)
        path = tmp_path / "blurry" / "a.png"
        path.write_bytes(path.read_bytes()[:60])  # valid signature, broken data
        ds = DEDDataset(tmp_path, crop=None, augment=False)
        with caplog.at_level(logging.WARNING):
            item = ds[0]
        assert "cannot read image" in caplog.text
        assert torch.equal(item["blurry"], ds[1]["blurry"])

    def test_all_unreadable(self, tmp_path):
        _make_ded(tmp_path, stems=("a",))
        (tmp_path / "blurry" / "a.png").write_bytes(b"junk")
        with pytest.raises(DataError, match="^no readable blurry/sharp/defocus_map group under "):
            DEDDataset(tmp_path)

    def test_missing_root(self, tmp_path):
        with pytest.raises(DataError, match=f"^dataset folder not found: {tmp_path / 'nope'}$"):
            DEDDataset(tmp_path / "nope")

    def test_missing_subfolder(self, tmp_path):
        _make_ded(tmp_path)
        for file in (tmp_path / "defocus_map").iterdir():
            file.unlink()
        (tmp_path / "defocus_map").rmdir()
        with pytest.raises(DataError, match=f"^defocus_map folder not found: {tmp_path / 'defocus_map'}$"):
            DEDDataset(tmp_path)

    def test_empty_subfolder(self, tmp_path):
        _make_ded(tmp_path)
        for file in (tmp_path / "sharp").iterdir():
            file.unlink()
        with pytest.raises(DataError, match=r"^no image files \(.*\) in sharp folder "):
            DEDDataset(tmp_path)

    def test_no_common_stems(self, tmp_path):
        _make_ded(tmp_path)
        for file in (tmp_path / "sharp").iterdir():
            file.rename(file.with_name("other_" + file.name))
        with pytest.raises(DataError, match="^no file names common to blurry, sharp, defocus_map under "):
            DEDDataset(tmp_path)

    def test_size_mismatch(self, tmp_path):
        _make_ded(tmp_path, stems=("a",))
        _write_rgb(tmp_path / "sharp" / "a.png", _pattern(10, 10, 0))
        with pytest.raises(DataError, match=r"^size mismatch in a: "):
            DEDDataset(tmp_path, crop=8)[0]


class TestPairs:
    @pytest.mark.parametrize(
        "blurry, sharp", [("blurry", "sharp"), ("source", "target"), ("inputC", "target")]
    )
    def test_layouts(self, tmp_path, blurry, sharp):
        _make_pairs(tmp_path, blurry, sharp)
        ds = PairDataset(tmp_path, crop=16)
        assert len(ds) == 2
        item = ds[0]
        _assert_item(item, 16, False)
        assert item["defocus_map"].abs().max() == 0

    def test_whole_images_exact(self, tmp_path):
        _make_pairs(tmp_path, "source", "target")
        item = PairDataset(tmp_path, crop=None, augment=False)[1]
        expected = cv2.imread(str(tmp_path / "target" / "y.png"))[..., ::-1].astype(np.float32) / 255
        np.testing.assert_allclose(item["sharp"].permute(1, 2, 0).numpy(), expected, atol=1e-7)

    def test_no_layout(self, tmp_path):
        (tmp_path / "blurry").mkdir()
        with pytest.raises(
            DataError,
            match=r"^no pair layout under .*: expected blurry/ \+ sharp/, "
            r"source/ \+ target/, inputC/ \+ target/$",
        ):
            PairDataset(tmp_path)

    def test_missing_root(self, tmp_path):
        with pytest.raises(DataError, match="^dataset folder not found: "):
            PairDataset(tmp_path / "nope")


class TestImageFolderSource:
    def test_bit_depths_and_channels(self, tmp_path):
        rgb = _pattern(8, 10, 0)
        _write_rgb(tmp_path / "a8.png", rgb)
        _write_rgb(tmp_path / "b16.png", rgb, np.uint16)
        grey = np.rint(rgb[..., 0] * 255).astype(np.uint8)
        cv2.imwrite(str(tmp_path / "c_grey.png"), grey)
        bgra = np.dstack([np.rint(rgb[..., ::-1] * 255), np.full((8, 10), 7)]).astype(np.uint8)
        cv2.imwrite(str(tmp_path / "d_alpha.png"), bgra)
        source = ImageFolderSource(tmp_path)
        images = [source.load(i).image for i in range(len(source))]
        assert all(im.shape == (8, 10, 3) and im.dtype == np.float32 for im in images)
        np.testing.assert_allclose(images[0], rgb, atol=0.5 / 255 + 1e-6)
        np.testing.assert_allclose(images[1], rgb, atol=0.5 / 65535 + 1e-6)
        np.testing.assert_allclose(images[2], np.repeat(grey[..., None] / 255.0, 3, 2), atol=1e-6)
        np.testing.assert_allclose(images[3], images[0], atol=1e-6)

    def test_unreadable_skipped_with_count(self, tmp_path, caplog):
        _write_rgb(tmp_path / "good.png", _pattern(8, 8, 0))
        (tmp_path / "bad.jpg").write_bytes(b"junk")
        (tmp_path / "notes.txt").write_text("ignored: not an image extension")
        with caplog.at_level(logging.WARNING):
            source = ImageFolderSource(tmp_path)
        assert len(source) == 1 and [p.name for p in source.skipped] == ["bad.jpg"]
        assert f"skipped 1 unreadable file(s) in {tmp_path}" in caplog.text

    def test_max_side(self, tmp_path):
        _write_rgb(tmp_path / "big.png", _pattern(40, 80, 0))
        assert ImageFolderSource(tmp_path, max_side=20).load(0).image.shape == (10, 20, 3)

    def test_missing_folder(self, tmp_path):
        with pytest.raises(DataError, match=f"^image folder not found: {tmp_path / 'nope'}$"):
            ImageFolderSource(tmp_path / "nope")

    def test_empty_folder(self, tmp_path):
        with pytest.raises(DataError, match=rf"^no image files \(.*\) in image folder {tmp_path}$"):
            ImageFolderSource(tmp_path)

    def test_all_unreadable(self, tmp_path):
        (tmp_path / "bad.png").write_bytes(b"junk")
        with pytest.raises(DataError, match=f"^none of the 1 image files in {tmp_path} is readable$"):
            ImageFolderSource(tmp_path)

    def test_read_image_error(self, tmp_path):
        with pytest.raises(DataError, match="^cannot read image "):
            read_image(tmp_path / "missing.png")


class TestMapsAndPhotos:
    def test_defocus_map_round_trip(self, tmp_path):
        radius = np.array([[0.0, 0.0004, 1.2345], [9.9999, 65.535, 80.0]], np.float32)
        write_radius_png(tmp_path / "m.png", radius)
        assert cv2.imread(str(tmp_path / "m.png"), cv2.IMREAD_ANYDEPTH).dtype == np.uint16
        np.testing.assert_allclose(
            read_radius_png(tmp_path / "m.png"), [[0.0, 0.0, 1.2345], [10.0, 65.535, 65.535]], atol=5e-4
        )

    def test_splits_are_disjoint_and_load(self):
        assert not set(TRAIN_PHOTOS) & set(VALIDATION_PHOTOS)
        for split in ("train", "validation"):
            photos = SkimagePhotos(split)
            for i in range(len(photos)):
                photo = photos.load(i)
                assert photo.image.ndim == 3 and photo.image.shape[2] == 3
                assert photo.image.dtype == np.float32 and 0 <= photo.image.min() <= photo.image.max() <= 1
                if photo.depth is not None:
                    assert photo.depth.shape == photo.image.shape[:2] and np.all(photo.depth > 0)
                    assert np.all(np.isfinite(photo.depth))

    def test_bad_split(self):
        with pytest.raises(ValueError, match="unknown split 'test'"):
            SkimagePhotos("test")


class TestValidationSet:
    def test_contents(self):
        levels = (2.0, 5.0)
        samples = build_validation_set(size=48, levels=levels, dead_leaves_images=1)
        names = [s["name"] for s in samples]
        assert names == [n for n in (*VALIDATION_PHOTOS, "dead_leaves_0") for _ in levels]
        assert not set(names) & set(TRAIN_PHOTOS)
        for sample in samples:
            _assert_item({k: sample[k] for k in KEYS}, 48, True)
            peak = sample["defocus_map"].max().item() * MAP_RADIUS_SCALE_PX
            assert peak == pytest.approx(sample["level"], rel=1e-5)
        first, second = samples[0], samples[1]  # same scene, two levels
        assert torch.equal(first["sharp"], second["sharp"])
        torch.testing.assert_close(second["defocus_map"], first["defocus_map"] * 2.5)

    def test_deterministic(self):
        a = build_validation_set(seed=1, size=32, levels=(4.0,), dead_leaves_images=1)
        b = build_validation_set(seed=1, size=32, levels=(4.0,), dead_leaves_images=1)
        c = build_validation_set(seed=2, size=32, levels=(4.0,), dead_leaves_images=1)
        assert all(torch.equal(x["blurry"], y["blurry"]) for x, y in zip(a, b))
        assert not torch.equal(a[0]["blurry"], c[0]["blurry"])
