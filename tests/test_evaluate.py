"""Validation on held-out photos: the set it renders, the figures it reports, the CLI."""

import json

import cv2
import numpy as np
import pytest
import torch

from training import evaluate
from training.checkpoint import load_checkpoint
from training.data import DataError, curation
from training.data.photo_validation import build_photo_validation_set, detailed_windows
from training.map_regions import REGIONS
from training.metrics import psnr


class TestPhotoSet:
    def test_scenes_levels_and_determinism(self, held_out):
        samples = build_photo_validation_set(held_out, size=64, levels=(2.5, 10.0), crops=2)
        assert [(s["name"], s["level"]) for s in samples[:4]] == [
            ("pkg-a/one#0", 2.5),
            ("pkg-a/one#0", 10.0),
            ("pkg-a/one#1", 2.5),
            ("pkg-a/one#1", 10.0),
        ]
        assert len(samples) == 2 * 2 * 2 and samples[0]["blurry"].shape == (3, 64, 64)
        for sample in samples:
            assert float(sample["defocus_map"].max()) == pytest.approx(sample["level"] / 10.0, rel=1e-5)
            assert float(sample["defocus_map"].min()) < 0.05  # the focal plane lies inside the scene
        again = build_photo_validation_set(held_out, size=64, levels=(2.5, 10.0), crops=2)
        assert all(torch.equal(a["blurry"], b["blurry"]) for a, b in zip(samples, again))

    def test_a_picture_added_leaves_the_others_samples_alone(self, held_out, texture):
        before = build_photo_validation_set(held_out, size=64, levels=(2.5, 10.0), crops=1)
        first = held_out / "holdout" / "pkg-0" / "first.png"  # sorts before both pictures
        first.parent.mkdir()
        cv2.imwrite(str(first), np.rint(texture(9, 200, 260) * 255).astype(np.uint8))
        after = build_photo_validation_set(held_out, size=64, levels=(2.5, 10.0), crops=1)
        assert [s["name"] for s in after] == ["pkg-0/first#0"] * 2 + [s["name"] for s in before]
        for old, new in zip(before, after[2:]):
            for key in ("blurry", "sharp", "defocus_map"):
                assert torch.equal(old[key], new[key])

    def test_uniform_blur(self, held_out):
        samples = build_photo_validation_set(held_out, size=64, levels=(2.5, 10.0), crops=1, uniform=True)
        for sample in samples:
            np.testing.assert_allclose(sample["defocus_map"].numpy(), sample["level"] / 10.0, rtol=1e-5)
        by_depth = build_photo_validation_set(held_out, size=64, levels=(2.5, 10.0), crops=1)
        assert [s["name"] for s in samples] == [s["name"] for s in by_depth]

    def test_no_corpus(self, tmp_path):
        with pytest.raises(DataError, match=r"^no holdout photos at .* \(run `make data`\)$"):
            build_photo_validation_set(tmp_path)

    def test_detailed_windows(self, texture):
        image = np.full((128, 192, 3), 0.5, np.float32)
        image[64:, 128:] = texture(3, 64, 64)
        image[:64, :64] = 0.5 + 0.5 * (texture(4, 64, 64) - 0.5)
        assert detailed_windows(image, 64, 3) == [(64, 128), (0, 0), (0, 64)]
        assert len(detailed_windows(image, 64, 10)) == 6  # no more fit without overlap

    def test_detailed_windows_leave_out_the_pictures_own_blur(self, texture):
        image = texture(7, 1024, 1024)
        image[:, 512:] = cv2.GaussianBlur(image, (0, 0), 6.0)[:, 512:]  # its own bokeh
        windows = detailed_windows(image, 320, 4)
        assert len(windows) == 3  # one above the other: the left half holds no more
        half = 512 + curation.TILE // 2  # a window may reach the first blurred tile, not its centre
        assert all(x + 320 <= half for _, x in windows)


class TestFigures:
    def test_nyquist_energy_of_stripes(self):
        x = np.arange(16)
        stripes = np.broadcast_to((0.5 + 0.1 * (-1.0) ** x)[None, :, None], (8, 16, 3))
        checker = 0.5 + 0.1 * (-1.0) ** (x[None, :16] + np.arange(16)[:, None])
        assert evaluate.nyquist_energy(stripes) == pytest.approx(0.01)
        assert evaluate.nyquist_energy(np.repeat(checker[..., None], 3, 2)) == pytest.approx(0.01)
        assert evaluate.nyquist_energy(np.full((8, 16, 3), 0.5)) == pytest.approx(0.0)

    def test_image_metrics(self, texture):
        sharp = texture(5, 32, 32)
        out = np.clip(sharp + 2 / 255, 0, 1)
        out[..., 0] = sharp[..., 0]
        true_map = np.zeros((32, 32), np.float32)
        true_map[:, 16:] = 0.3
        estimated = true_map + 0.01
        m = evaluate.image_metrics(sharp, out, sharp, sharp, estimated, true_map)
        assert m["level_shift"] == pytest.approx(4 / 3, abs=0.05)
        assert m["level_shift_max"] == pytest.approx(2, abs=0.05)
        assert m["map_bias"] == pytest.approx(0.01) and m["map_mae"] == pytest.approx(0.01)
        assert m["in_focus_fraction"] == 0.5 and m["in_focus_map"] == pytest.approx(0.01)
        assert m["in_focus_psnr_in"] == float("inf") and m["psnr_true_map"] == float("inf")
        assert m["in_focus_psnr_true_map"] == float("inf")
        assert m["in_focus_psnr_out"] == pytest.approx(evaluate.masked_psnr(out, sharp, true_map == 0))
        assert m["nyquist_db"] == pytest.approx(0.0, abs=0.05)
        # Every pixel is off by 0.01, so each region present has that MAE; the map's jump
        # at column 16 (0.3 > OCCLUSION_STEP) makes an occlusion band.
        present = [r for r in REGIONS if not np.isnan(m[f"map_mae_{r}"])]
        assert "occlusion" in present and all(m[f"map_mae_{r}"] == pytest.approx(0.01) for r in present)
        assert m["map_bias_occlusion_blurrier"] == pytest.approx(0.01)
        assert m["map_bias_occlusion_sharper"] == pytest.approx(0.01)

    def test_oracle_gaps(self, texture, tiny_checkpoint):
        """The true map pasted in one kind of region at a time: nothing gained where the
        estimate is the truth; the whole gap where one region is the whole image."""
        model, _ = load_checkpoint(tiny_checkpoint)
        model.eval()
        blurry = torch.as_tensor(texture(3, 32, 32).transpose(2, 0, 1))[None]
        sharp = texture(4, 32, 32)
        with torch.no_grad():
            estimated = model.estimate(blurry)
            psnr_out = psnr(evaluate._hwc(model.restore(blurry, estimated)[0]), sharp)
            same = evaluate.oracle_gaps(model, blurry, estimated, estimated.clone(), sharp, psnr_out)
            assert set(same) == {f"gap_{r}" for r in REGIONS}
            present = [value for value in same.values() if not np.isnan(value)]
            assert present and all(value == 0.0 for value in present)

            flat = np.full((32, 32, 3), 0.5, np.float32)
            truth = torch.full_like(estimated, 0.5)  # no jump: no occlusion band either
            psnr_flat = psnr(evaluate._hwc(model.restore(blurry, estimated)[0]), flat)
            gap = psnr(evaluate._hwc(model.restore(blurry, truth)[0]), flat) - psnr_flat
            gaps = evaluate.oracle_gaps(model, blurry, estimated, truth, flat, psnr_flat)
        assert gap != 0.0 and gaps["gap_flat"] == pytest.approx(gap)
        assert all(np.isnan(gaps[f"gap_{r}"]) for r in REGIONS if r != "flat")

    def test_masked_psnr(self):
        a, b = np.zeros((2, 2, 3)), np.zeros((2, 2, 3))
        b[0, 0] = 0.1
        mask = np.array([[True, True], [False, False]])
        assert evaluate.masked_psnr(a, b, mask) == pytest.approx(10 * np.log10(1 / (0.01 / 2)))
        assert np.isnan(evaluate.masked_psnr(a, b, np.zeros((2, 2), bool)))

    def test_summary_counts_worse(self):
        rows = [
            {"name": "a", "level": 5.0, "psnr_in": 30.0, "psnr_out": 29.95, "x": float("nan")},
            {"name": "b", "level": 5.0, "psnr_in": 30.0, "psnr_out": 29.0, "x": 1.0},
            {"name": "a", "level": 10.0, "psnr_in": 25.0, "psnr_out": 27.0, "x": float("nan")},
        ]
        summary = evaluate.summarise(rows)
        assert summary["5"]["worse"] == 2 and summary["5"]["worse_0.1dB"] == 1 and summary["5"]["x"] == 1.0
        assert summary["all"]["images"] == 3 and np.isnan(summary["10"]["x"])

    def test_worst_scenes_by_mean_gap(self):
        rows = [
            {"name": n, "level": lv, "psnr_in": 30.0, "psnr_out": out, "gap": gap}
            for n, lv, out, gap in [
                ("a", 5.0, 31.0, 0.5),
                ("a", 10.0, 29.0, 2.5),
                ("b", 5.0, 29.95, 1.0),
                ("b", 10.0, 31.0, 1.0),
                ("c", 5.0, 32.0, 0.2),
            ]
        ]
        worst = evaluate.worst_scenes(rows, 2)
        assert list(worst) == ["a", "b"]  # mean gaps 1.5, 1.0, 0.2
        assert worst["a"]["gap"] == pytest.approx(1.5) and worst["a"]["images"] == 2
        assert worst["a"]["worse_0.1dB"] == 1 and worst["b"]["worse"] == 1 and worst["b"]["worse_0.1dB"] == 0
        assert list(evaluate.worst_scenes(rows, 10)) == ["a", "b", "c"]


class TestCli:
    @pytest.mark.parametrize("clean,uniform", [(False, False), (True, False), (False, True)])
    def test_photos(self, held_out, tiny_checkpoint, tmp_path, capsys, monkeypatch, clean, uniform):
        monkeypatch.setattr(
            evaluate,
            "load_set",
            lambda name, root, noise, uniform: build_photo_validation_set(
                root, size=64, levels=(5.0,), crops=1, noise=noise, uniform=uniform
            ),
        )
        out = tmp_path / "result.json"
        argv = ["--checkpoint", str(tiny_checkpoint), "--corpus", str(held_out), "--json", str(out)]
        flags = ["--clean"] * clean + ["--uniform"] * uniform + ["--scenes", "1", "--oracle"]
        assert evaluate.main(argv + flags) == 0
        printed = capsys.readouterr().out
        assert printed.startswith("| level px | n | PSNR in |") and "| 5 | 2 |" in printed
        assert "| level px | gap | gap flat | gap texture | gap edge | gap occlusion |" in printed
        scene_rows = [line for line in printed.splitlines() if line.startswith("| pkg-")]
        assert "| scene | n | PSNR in |" in printed and len(scene_rows) == 1
        assert f"photos{' (clean)' * clean}{' (uniform)' * uniform}: 2 samples of 2 scenes" in printed
        result = json.loads(out.read_text())
        assert [s["name"] for s in result["samples"]] == ["pkg-a/one#0", "pkg-b/two#0"]
        assert result["summary"]["all"]["images"] == 2 and "gap_edge" in result["samples"][0]
        assert (result["noise"], result["uniform"]) == (not clean, uniform)

    def test_uniform_builtin_refused(self, tiny_checkpoint, capsys):
        assert evaluate.main(["--checkpoint", str(tiny_checkpoint), "--set", "builtin", "--uniform"]) == 1
        assert capsys.readouterr().err == "error: --uniform renders the photos set only\n"

    def test_errors(self, tmp_path, tiny_checkpoint, capsys):
        assert evaluate.main(["--checkpoint", str(tmp_path / "nope")]) == 1
        assert capsys.readouterr().err.startswith("error: ")
        assert evaluate.main(["--checkpoint", str(tiny_checkpoint), "--corpus", str(tmp_path)]) == 1
        expected = f"error: no holdout photos at {tmp_path / 'holdout'} (run `make data`)\n"
        assert capsys.readouterr().err == expected
