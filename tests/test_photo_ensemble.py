"""benchmarks.photo_ensemble: one pass against the self-ensemble on the held-out photos."""

import json

import numpy as np
import pytest

from benchmarks import photo_ensemble
from runtime import Deblurrer
from training.metrics import psnr


def _row(level, psnr_in, one, ensemble, name="p#0"):
    return {"name": name, "level": level, "psnr_in": psnr_in, "psnr_one": one, "psnr_ensemble": ensemble}


def test_summary_against_hand_counts():
    rows = [
        _row(2.5, 30.0, 31.0, 31.5),
        _row(2.5, 30.0, 29.85, 29.80),  # ensemble below one pass; one pass 0.15 dB below the input
        _row(5.0, 28.0, 29.0, 28.7),
    ]
    summary = photo_ensemble.summarise(rows)
    assert list(summary) == ["2.5", "5", "all"]
    low = summary["2.5"]
    assert low["images"] == 2 and low["psnr_one"] == pytest.approx(30.425)
    assert (low["ensemble_below_one"], low["one_below_input"], low["ensemble_below_input"]) == (1, 1, 1)
    assert low["worst_ensemble_minus_one"] == pytest.approx(-0.05)
    assert summary["all"]["ensemble_below_one"] == 2
    assert summary["all"]["worst_ensemble_minus_one"] == pytest.approx(-0.3)
    report = photo_ensemble.markdown(
        {
            "bundle": "b",
            "backend": "onnxruntime",
            "passes": 8,
            "noise": True,
            "uniform": False,
            "scenes": 2,
            "machine": {"cpu": "c", "git_commit": "abc"},
            "summary": summary,
        }
    )
    assert "| 2.5 | 2 | 30.00 | 30.43 | 30.65 | 1 | -0.050 | 1 | 1 |" in report


def test_scores_match_the_runtime(held_out, tiny_bundle):
    samples = photo_ensemble.load_samples(held_out, limit=2, size=64)
    assert [s["level"] for s in samples] == [2.5, 5.0] and samples[0]["blurry"].shape == (64, 64, 3)
    assert samples[0]["blurry"].dtype == np.float32 and samples[0]["blurry"].flags.c_contiguous
    options = {"backend": "onnxruntime", "threads": 1}
    with (
        Deblurrer(tiny_bundle[0], **options) as one,
        Deblurrer(tiny_bundle[0], **options, self_ensemble=2) as two,
    ):
        rows = photo_ensemble.score(one, two, samples)
        expected = psnr(two.run(samples[1]["blurry"])[0], samples[1]["sharp"])
    assert rows[1]["psnr_ensemble"] == pytest.approx(expected)
    assert rows[0]["psnr_in"] == pytest.approx(psnr(samples[0]["blurry"], samples[0]["sharp"]))
    assert rows[0]["psnr_one"] != rows[0]["psnr_ensemble"]


@pytest.fixture
def small_crops(monkeypatch):
    """``main`` renders 64² crops instead of the set's 320² (seconds, not minutes); gives
    the real loader."""
    real = photo_ensemble.load_samples
    monkeypatch.setattr(
        photo_ensemble,
        "load_samples",
        lambda corpus, limit, noise, uniform: real(corpus, limit, size=64, noise=noise, uniform=uniform),
    )
    return real


def _argv(bundle, corpus, out, limit):
    """``main``'s arguments for an x2 report of the first ``limit`` samples on ONNX Runtime."""
    options = {"--bundle": bundle, "--corpus": corpus, "--passes": 2, "--limit": limit}
    options.update({"--backend": "onnxruntime", "--threads": 1, "--out": out})
    return [str(item) for pair in options.items() for item in pair]


def test_cli_writes_the_report(held_out, tiny_bundle, tmp_path, small_crops, capsys):
    assert photo_ensemble.main(_argv(tiny_bundle[0], held_out, tmp_path, 3)) == 0
    assert "# Self-ensemble x2 on the held-out photos" in capsys.readouterr().out
    result = json.loads((tmp_path / "photo-ensemble.json").read_text())
    assert result["summary"]["all"]["images"] == 3 and result["scenes"] == 1
    assert (tmp_path / "photo-ensemble.md").is_file()


def test_cli_errors_are_one_line(tmp_path, tiny_bundle, capsys):
    assert photo_ensemble.main(["--corpus", str(tmp_path), "--out", str(tmp_path)]) == 1
    assert (
        capsys.readouterr().err == f"error: no holdout photos at {tmp_path / 'holdout'} (run `make data`)\n"
    )
    with pytest.raises(SystemExit):
        photo_ensemble.main(["--passes", "3"])
    assert not (tmp_path / "photo-ensemble.md").exists()


def test_noise_free_and_uniform_renders(held_out):
    noisy, clean = (photo_ensemble.load_samples(held_out, 1, size=64, noise=n)[0] for n in (True, False))
    np.testing.assert_array_equal(clean["sharp"], noisy["sharp"])
    assert np.abs(clean["blurry"] - noisy["blurry"]).max() > 1 / 255  # the noise is gone, not only rounding
    uniform = photo_ensemble.load_samples(held_out, 1, size=64, noise=False, uniform=True)[0]
    np.testing.assert_array_equal(uniform["sharp"], clean["sharp"])
    # The depth render leaves its in-focus plane sharp; one radius everywhere blurs it all.
    assert psnr(uniform["blurry"], uniform["sharp"]) < psnr(clean["blurry"], clean["sharp"])


def test_noise_free_report(held_out, tiny_bundle, tmp_path, small_crops, capsys):
    argv = [*_argv(tiny_bundle[0], held_out, tmp_path, 1), "--noise-free"]
    assert photo_ensemble.main(argv) == 0
    assert "# Self-ensemble x2 on the held-out photos (noise-free)" in capsys.readouterr().out
    clean = small_crops(held_out, 1, size=64, noise=False)[0]
    result = json.loads((tmp_path / "photo-ensemble-noise-free.json").read_text())
    assert result["noise"] is False and result["samples"][0]["psnr_in"] == pytest.approx(
        psnr(clean["blurry"], clean["sharp"])
    )
    assert not (tmp_path / "photo-ensemble.json").exists()
    assert photo_ensemble.main([*argv, "--uniform"]) == 0
    assert "on the held-out photos (uniform blur, noise-free)" in capsys.readouterr().out
    assert json.loads((tmp_path / "photo-ensemble-uniform-noise-free.json").read_text())["uniform"] is True
