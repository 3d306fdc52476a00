"""Benchmarks: statistics helpers, planning, analysis and an end-to-end run on a tiny model."""

import json
import mmap
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from benchmarks import analysis, launch, machine, memory, stats
from benchmarks.backends import BY_NAME, baseline_for, select
from benchmarks.inputs import parse_size, parse_sizes, synthetic_image
from benchmarks.machine import REPO, machine_slug
from benchmarks.model_source import shown
from benchmarks.run import Collector, main, sizes_for
from benchmarks.worker import time_pair

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    "values, q, expected",
    [
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([1.0, 2.0, 3.0, 4.0], 90, 3.7),  # pos 2.7: 3 + 0.7 * (4 - 3)
        ([4.0, 1.0, 3.0, 2.0], 90, 3.7),  # order does not matter
        ([5.0], 90, 5.0),
        ([10.0, 20.0], 0, 10.0),
        ([10.0, 20.0], 100, 20.0),
        ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0], 90, 10.0),
    ],
)
def test_percentile_matches_hand_computed(values, q, expected):
    assert stats.percentile(values, q) == pytest.approx(expected)
    assert stats.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


@pytest.mark.parametrize(
    "values, q, message",
    [
        ([], 50, "percentile of no values"),
        ([1.0], 101, "percentile q must lie in [0, 100], got 101"),
        ([1.0], -1, "percentile q must lie in [0, 100], got -1"),
    ],
)
def test_percentile_rejects_bad_input(values, q, message):
    with pytest.raises(ValueError, match=r"^" + message.replace("[", r"\[").replace("]", r"\]") + "$"):
        stats.percentile(values, q)


def test_summarise_in_milliseconds():
    s = stats.summarise([0.3, 0.1, 0.2, 0.4])
    assert s == pytest.approx(
        {"runs": 4, "median_ms": 250.0, "p90_ms": 370.0, "min_ms": 100.0, "mean_ms": 250.0}
    )


@pytest.mark.parametrize(
    "fn, args, expected",
    [
        (stats.megapixels_per_s, (2_000_000, 0.5), 4.0),
        (stats.gflops, (100.0, 1_000_000, 0.5), 0.4),  # 2 * 100 * 1e6 / 0.5 / 1e9
        (stats.gflops, (91_300.0, 1024 * 1024, 2.0), 2 * 91_300 * 1024 * 1024 / 2.0 / 1e9),
        (stats.gemm_gflops, (1000, 2.0), 1.0),  # 2 * 1e9 / 2 / 1e9
        (stats.ratio, (3.0, 4.0), 0.75),
        (stats.speedup, (250.0, 100.0), 2.5),
        (stats.overhead, (115.0, 100.0), 0.15),
        (stats.overhead, (90.0, 100.0), -0.10),
    ],
)
def test_derived_figures(fn, args, expected):
    assert fn(*args) == pytest.approx(expected)


@pytest.mark.parametrize(
    "fn, args",
    [
        (stats.ratio, (None, 1.0)),
        (stats.ratio, (1.0, None)),
        (stats.ratio, (1.0, 0.0)),
        (stats.speedup, (None, 2.0)),
        (stats.overhead, (1.0, None)),
    ],
)
def test_ratios_of_missing_values_are_none(fn, args):
    assert fn(*args) is None


# ---------------------------------------------------------------- sizes, backends, machine


@pytest.mark.parametrize("text, expected", [("1920x1080", (1920, 1080)), ("64X32", (64, 32))])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["256", "0x64", "ax64", "64x64x3", "-64x64", ""])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="is not WIDTHxHEIGHT"):
        parse_size(text)


def test_parse_sizes_sorts_by_pixels_and_dedupes():
    assert parse_sizes("1024x1024, 256x256,1920x1080,256x256") == [(256, 256), (1024, 1024), (1920, 1080)]


def test_parse_sizes_checks_the_multiple():
    with pytest.raises(ValueError, match=r"^size 65x64: width and height must be multiples of 2$"):
        parse_sizes("64x64,65x64", multiple=2)


def test_select_orders_baseline_first_and_filters():
    names = [s.name for s in select(None, ["cpu"])]
    assert names[0] == "torch-eager" and "torch-compile" in names
    assert all(BY_NAME[n].device == "cpu" for n in names)
    assert "torch-compile" not in [s.name for s in select(None, ["cpu"], compile_=False)]
    picked = [s.name for s in select(["runtime", "torch-cuda-fp32", "torch-eager"], ["cpu"])]
    assert picked == ["torch-eager", "runtime", "torch-cuda-fp32"]


def test_select_unknown_backend_is_one_line():
    with pytest.raises(ValueError, match=r"^unknown backend\(s\) nope; choose from torch-eager, "):
        select(["nope"], ["cpu"])


def test_large_sizes_only_for_large_backends():
    sizes = [(256, 256), (3840, 2160), (6000, 4000)]
    assert sizes_for(BY_NAME["runtime"], sizes) == ["256x256", "3840x2160", "6000x4000"]
    assert sizes_for(BY_NAME["torch-eager"], sizes) == ["256x256", "3840x2160"]
    assert sizes_for(BY_NAME["runtime-whole"], sizes) == ["256x256", "3840x2160"]
    assert sizes_for(BY_NAME["ort-fp32"], sizes) == ["256x256"]


@pytest.mark.parametrize(
    "machine, device, slug",
    [
        (
            {"threads_used": 2, "cpu": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "gpus": []},
            "cpu",
            "cpu-2core-xeon-platinum",
        ),
        ({"threads_used": 16, "cpu": "AMD EPYC", "gpus": []}, "cpu", "cpu-16core-epyc"),
        (
            {"threads_used": 16, "cpu": "x", "gpus": ["NVIDIA H100 80GB HBM3, 81559 MiB, 580.1"]},
            "cuda",
            "gpu-h100-hbm3",
        ),
        ({"threads_used": 4, "cpu": "AMD EPYC", "gpus": []}, "cuda", "cpu-4core-epyc"),
    ],
)
def test_machine_slug(machine, device, slug):
    assert machine_slug(machine, device) == slug


def test_test_image_is_deterministic():
    a, b = synthetic_image(96, 64, seed=3), synthetic_image(96, 64, seed=3)
    assert a.shape == (64, 96, 3) and a.dtype == np.float32
    assert np.array_equal(a, b) and 0.0 <= a.min() and a.max() <= 1.0 and a.std() > 0.05
    assert not np.array_equal(a, synthetic_image(96, 64, seed=4))


def test_peak_rss_resets_and_grows():
    if not memory.reset_peak_rss():
        pytest.skip("this OS cannot reset the peak RSS")
    before = memory.peak_rss_bytes()
    # Fresh pages from the OS: malloc may hand back resident memory an earlier test freed.
    block = mmap.mmap(-1, 64 * 2**20)
    np.frombuffer(block, np.uint8)[:] = 1  # touch all 64 MiB
    assert memory.peak_rss_bytes() >= before + 60 * 2**20
    block.close()
    memory.reset_peak_rss()
    assert memory.peak_rss_bytes() < before + 60 * 2**20


# ---------------------------------------------------------------- analysis


def _cell(backend, size, median_ms, rss_mib=100.0, **extra):
    w, h = map(int, size.split("x"))
    return {
        "backend": backend,
        "size": size,
        "width": w,
        "height": h,
        "pixels": w * h,
        "status": "ok",
        "median_ms": median_ms,
        "first_call_ms": median_ms,
        "peak_rss_bytes": int(rss_mib * 2**20),
        **extra,
    }


def _results(cells):
    return {
        "model": {"macs_per_pixel": 1000.0},
        "settings": {"devices": ["cpu"], "sizes": ["1024x1024", "3840x2160"]},
        "gemm_peak": {"cpu": {"fp32_gflops": 100.0}},
        "cells": cells,
    }


def test_derive_and_targets_against_hand_computed_values():
    results = _results(
        [
            _cell("torch-eager", "1024x1024", 650.0, 400.0),
            _cell("torch-compile", "1024x1024", 330.0),
            _cell("torch-compile-bf16", "1024x1024", 310.0),
            _cell("runtime", "1024x1024", 100.0, 200.0),
            _cell("runtime-whole", "1024x1024", 90.0),
            _cell("runtime", "3840x2160", 850.0, 1500.0),
            _cell("runtime-whole", "3840x2160", 800.0, 3000.0),
            _cell("runtime", "6000x4000", 13000.0, 1900.0),
        ]
    )
    results["gemm_peak"]["cpu"]["bf16_gflops"] = 40.0
    results["backends"] = {"runtime": {"precision": "bf16"}}  # the worker's report of "best"
    analysis.derive(results)
    rt = analysis.cell_index(results)[("runtime", "1024x1024")]
    assert rt["megapixels_per_s"] == pytest.approx(1024 * 1024 / 1e6 / 0.1)
    assert rt["gflops"] == pytest.approx(2 * 1000 * 1024 * 1024 / 0.1 / 1e9)
    assert rt["precision"] == "bf16"
    assert rt["fraction_of_peak"] == pytest.approx(rt["gflops"] / 40.0)  # its own precision's peak
    compiled_bf16 = analysis.cell_index(results)[("torch-compile-bf16", "1024x1024")]
    assert compiled_bf16["fraction_of_peak"] == pytest.approx(compiled_bf16["gflops"] / 40.0)
    whole = analysis.cell_index(results)[("runtime-whole", "1024x1024")]
    assert whole["fraction_of_peak"] == pytest.approx(whole["gflops"] / 100.0)  # "best" unreported: FP32
    assert rt["speedup_vs_baseline"] == pytest.approx(6.5)
    assert rt["peak_rss_vs_baseline"] == pytest.approx(0.5)
    assert analysis.cell_index(results)[("torch-compile", "1024x1024")]["compile_ms"] == 0.0
    targets = {t["name"]: t for t in analysis.evaluate_targets(results, 2048 * 2**20, tile=512)}
    eager = targets["runtime-vs-torch-eager"]
    assert (eager["measured"], eager["met"], eager["margin"]) == pytest.approx((6.5, True, 4.5))
    best = targets["runtime-vs-torch-compile"]  # the faster peer: torch-compile-bf16
    assert (best["measured"], best["met"], best["margin"]) == pytest.approx((3.1, True, 0.1))
    assert best["note"] == "vs torch-compile-bf16"
    tiling = targets["runtime-tiling-overhead"]  # largest size over one tile: 3840x2160
    assert tiling["measured"] == pytest.approx(850 / 800 - 1) and tiling["met"]
    assert tiling["margin"] == pytest.approx(0.10 - 0.0625)
    large = targets["runtime-large-memory"]
    assert (large["measured"], large["met"], large["margin"]) == pytest.approx((1500.0, True, 548.0))
    assert large["note"] == "whole-image peak RSS 3000 MiB"
    share = targets["runtime-bf16-peak-share"]
    assert share["measured"] == pytest.approx(rt["gflops"] / 40.0) and share["met"]
    photo, photo_rss = targets["runtime-photo-time"], targets["runtime-photo-memory"]
    assert (photo["measured"], photo["met"], photo["margin"]) == pytest.approx((13000.0, False, -1000.0))
    assert (photo_rss["measured"], photo_rss["met"]) == pytest.approx((1900.0, True))


def test_targets_missed_and_unmeasured():
    results = _results([_cell("torch-eager", "1024x1024", 150.0), _cell("runtime", "1024x1024", 100.0)])
    analysis.derive(results)
    targets = {t["name"]: t for t in analysis.evaluate_targets(results, 2**30, tile=512)}
    eager = targets["runtime-vs-torch-eager"]
    assert eager["met"] is False and eager["margin"] == pytest.approx(-0.5)
    for name in (
        "runtime-vs-torch-compile",
        "runtime-tiling-overhead",
        "runtime-large-memory",
        "runtime-bf16-peak-share",
        "runtime-photo-time",
        "runtime-photo-memory",
    ):
        assert targets[name]["met"] is None and targets[name]["measured"] is None
    assert targets["runtime-bf16-peak-share"]["note"] == (
        "the path did not run BF16 here (no native BF16 on this CPU)"
    )


@pytest.mark.parametrize(
    "device, precision, expected",
    [
        ("cpu", "fp32", 100.0),
        ("cpu", "bf16", 400.0),
        ("cpu", "fp16", 100.0),
        ("cuda", "fp16", 900.0),
        ("cuda", "fp32", 300.0),
        ("cuda", "bf16", None),
    ],
)
def test_peak_of_the_paths_own_precision(device, precision, expected):
    results = {
        "gemm_peak": {
            "cpu": {"fp32_gflops": 100.0, "bf16_gflops": 400.0},
            "cuda": {"fp32_gflops": 300.0, "fp16_gflops": 900.0},
        }
    }
    assert analysis.peak_gflops(results, device, precision) == expected


def test_gemm_child_runs_without_the_openblas_overrides(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "262144")
    plain = launch.child_env(2)
    assert plain["OPENBLAS_CORETYPE"] == "Haswell" and plain["OMP_NUM_THREADS"] == "2"
    peak = launch.child_env(2, unset=launch.BLAS_TUNING_ENV)
    assert "OPENBLAS_CORETYPE" not in peak and "OPENBLAS_L2_SIZE" not in peak
    assert peak["OPENBLAS_NUM_THREADS"] == "2"


def test_cpu_features_are_read_from_the_flags(tmp_path):
    from common.cpu import cpu_flags

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 amx_tile\n")
    assert machine.cpu_features(cpu_flags(cpuinfo)) == ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"]
    assert machine.cpu_features(set()) == []


def _pair(median_ratio, status="ok"):
    return {
        "tiled": "runtime",
        "whole": "runtime-whole",
        "size": "3840x2160",
        "status": status,
        "backends": ["runtime", "runtime-whole"],
        "median_ratio": median_ratio,
        "latencies_ms": [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]],
    }


@pytest.mark.parametrize(
    "pairs, measured, note",
    [
        ([], 900 / 800 - 1, "from separate cells"),
        ([_pair(1.05)], 0.05, "median of 3 alternating-call rounds; separate cells: 12%"),
        ([_pair(None, status="error")], 900 / 800 - 1, "from separate cells"),
    ],
)
def test_tiling_overhead_prefers_alternating_calls(pairs, measured, note):
    results = _results([_cell("runtime", "3840x2160", 900.0), _cell("runtime-whole", "3840x2160", 800.0)])
    assert analysis.tiling_pairs(results, tile=512) == [("runtime", "runtime-whole", "3840x2160")]
    results["pairs"] = pairs
    targets = {t["name"]: t for t in analysis.evaluate_targets(results, 2**30, tile=512)}
    tiling = targets["runtime-tiling-overhead"]
    assert tiling["measured"] == pytest.approx(measured) and tiling["note"] == note


def test_no_tiling_pair_without_a_size_over_one_tile():
    results = _results([_cell("runtime", "1024x1024", 90.0), _cell("runtime-whole", "1024x1024", 80.0)])
    assert analysis.tiling_pairs(results, tile=1024) == []


class _Counted:
    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def __call__(self, image):
        self.calls.append(self.name)
        return image


@pytest.mark.parametrize(
    "rounds, order",
    [
        (1, "ab" + "ab"),
        (4, "ab" + "abbaabba"),
    ],
)
def test_time_pair_alternates_the_order(rounds, order):
    calls = []
    first, second = time_pair((_Counted("a", calls), _Counted("b", calls)), np.zeros(1), rounds, 1e9)
    assert "".join(calls) == order  # one warm-up each, then ab, ba, ...
    assert len(first) == len(second) == rounds


def _guarded_cells(monkeypatch, capsys, growth_per_pixel, sizes):
    """``runtime-whole``'s cell lines, with 4 GB available and a fake RSS growth per size."""
    from benchmarks import worker

    fake = type("R", (), {"description": "fake", "precision": None})
    monkeypatch.setattr(worker, "make_runner", lambda *a: fake())
    monkeypatch.setattr(worker.memory, "available_bytes", lambda: 4 * 10**9)
    monkeypatch.setattr(
        worker,
        "measure_size",
        lambda runner, spec, args, w, h: {
            "rss_base_bytes": 0,
            "peak_rss_bytes": growth_per_pixel(w * h) * w * h,
        },
    )
    worker.run_backend(
        worker.parse_args(
            ["--backend", "runtime-whole", "--inputs", ".", "--out", ".", "--sizes", sizes, "--threads", "1"]
        )
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return {ln["size"]: ln for ln in lines if ln["event"] == "cell"}


def test_memory_guard_predicts_from_the_largest_size_so_far(monkeypatch, capsys):
    """4000 B/px at 100 px, then 1000 B/px at 400 px: 2 M pixels predict 2 GB, within
    0.8 x 4 GB; the small size's rate would have predicted 8 GB."""
    cells = _guarded_cells(
        monkeypatch, capsys, lambda pixels: 4000 if pixels == 100 else 1000, "10x10,20x20,2000x1000"
    )
    assert [cell.get("reason") for cell in cells.values()] == [None, None, None]


def test_memory_guard_skips_what_would_not_fit(monkeypatch, capsys):
    cells = _guarded_cells(monkeypatch, capsys, lambda pixels: 1000, "20x20,2000x1000,4000x1000")
    assert "reason" not in cells["2000x1000"]  # 2 GB predicted
    assert cells["4000x1000"]["status"] == "skipped"  # 4 GB
    assert cells["4000x1000"]["reason"] == (
        "predicted peak RSS growth 3.7 GiB exceeds 80% of the 3.7 GiB available"
    )


def test_collector_records_a_dead_worker_as_errors():
    results = {"backends": {}, "cells": [], "quality": {"backends": {}}}
    collect = Collector(results, [(64, 64), (128, 128)])
    spec = BY_NAME["ort-fp32"]
    results["backends"][spec.name] = {"status": "ok"}
    lines = [
        {"event": "setup", "status": "ok", "description": "d"},
        {"event": "cell", "size": "64x64", "status": "ok", "median_ms": 1.0},
    ]
    collect.add_worker(spec, ["64x64", "128x128"], lines, "timed out after 5 s")
    assert [(c["size"], c["status"], c.get("error")) for c in results["cells"]] == [
        ("64x64", "ok", None),
        ("128x128", "error", "timed out after 5 s"),
    ]


def test_worker_bad_arguments_are_reported_not_raised(tmp_path):
    lines, error = launch.run_module("benchmarks.worker", ["--backend", "nope"], 1, 60, tmp_path / "err.txt")
    assert lines == []
    assert error.startswith("worker exited with 2: ") and "invalid choice: 'nope'" in error


# ---------------------------------------------------------------- end to end


def test_end_to_end_report(tiny_checkpoint, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the missing-backend check needs a machine without a CUDA GPU")
    out = tmp_path / "report"
    rc = main(
        [
            "--model",
            str(tiny_checkpoint),
            "--backends",
            "torch-eager,torch-cuda-fp32",
            "--sizes",
            "64x64,96x64",
            "--runs",
            "2",
            "--quality-images",
            "2",
            "--threads",
            "1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert f"report written to {out}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "latency.png",
        "quality.png",
        "results.json",
    ]
    for png in ("latency.png", "quality.png"):
        data = (out / png).read_bytes()
        assert data[:8] == PNG_MAGIC
        width, height = struct.unpack(">II", data[16:24])
        assert width > 400 and height > 200

    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "defocus-deblur-benchmark/1"
    assert set(results) >= {
        "created",
        "command",
        "machine",
        "model",
        "settings",
        "gemm_peak",
        "backends",
        "cells",
        "quality",
        "targets",
        "elapsed_s",
    }
    assert results["settings"]["sizes"] == ["64x64", "96x64"] and results["settings"]["threads"] == 1
    assert results["model"]["trained"] is True and results["model"]["macs_per_pixel"] > 0
    assert results["gemm_peak"]["cpu"]["fp32_gflops"] > 0
    assert results["backends"]["torch-eager"]["status"] == "ok"
    missing = results["backends"]["torch-cuda-fp32"]
    assert missing["status"] == "skipped" and "sees no CUDA GPU" in missing["reason"]

    cells = analysis.cell_index(results)
    for size in ("64x64", "96x64"):
        cell = cells[("torch-eager", size)]
        assert cell["status"] == "ok" and cell["runs"] == 2 and len(cell["latencies_ms"]) == 2
        assert cell["median_ms"] == pytest.approx(float(np.median(cell["latencies_ms"])))
        assert cell["p90_ms"] >= cell["median_ms"] > 0
        assert cell["speedup_vs_baseline"] == pytest.approx(1.0)
        assert cell["fidelity"] == {"reference": True}
        assert cell["peak_rss_bytes"] >= cell["rss_base_bytes"] > 0
        assert cell["gflops"] == pytest.approx(
            stats.gflops(results["model"]["macs_per_pixel"], cell["pixels"], cell["median_ms"] / 1e3)
        )
        assert cells[("torch-cuda-fp32", size)]["status"] == "skipped"

    quality = results["quality"]
    if quality["input"] is not None:
        assert quality["backends"]["torch-eager"]["psnr_db"] > 0
        assert quality["input"]["psnr_db"] > 0
    names = {t["name"] for t in results["targets"]}
    assert {"runtime-vs-torch-eager", "runtime-tiling-overhead", "runtime-large-memory"} <= names

    readme = (out / "README.md").read_text()
    assert "| backend | 64x64 | 96x64 |" in readme
    assert "| `torch-eager` |" in readme and "(1.00x)" in readme
    assert "| `torch-cuda-fp32` | skipped | skipped |" in readme
    assert (
        "| backend | precision | size | median ms | p90 ms | runs | MP/s | GFLOP/s | "
        "% own-precision peak | peak RSS MiB (x base) | GPU peak MiB | PSNR vs FP32 ref | "
        "SSIM vs ref | compile ms |"
    ) in readme
    assert "| `torch-eager` | fp32 | 64x64 |" in readme
    assert "- CPU features detected at run time: " in readme
    overrides = [f"{k}={os.environ[k]}" for k in launch.BLAS_TUNING_ENV if k in os.environ]
    assert (f"measured with {', '.join(overrides)} unset in that process" in readme) == bool(overrides)
    assert "## Targets" in readme and "![latency](latency.png)" in readme


@pytest.mark.parametrize(
    "path, expected",
    [
        (REPO / "models" / "default", "models/default"),
        (REPO / "models" / ".." / "models" / "default", "models/default"),
        (Path("/nonexistent/ckpt"), "/nonexistent/ckpt"),
    ],
)
def test_reports_show_repository_paths_relative(path, expected):
    """A committed report must not carry the absolute path of the machine that wrote it."""
    assert shown(path) == expected


def test_cli_bad_model_is_one_line(capsys):
    assert main(["--model", "/nonexistent/ckpt", "--backends", "torch-eager"]) == 2
    assert capsys.readouterr().err == (
        "benchmark failed: /nonexistent/ckpt: not a checkpoint folder "
        "(needs model.safetensors and config.json)\n"
    )


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--backends", "nope"], "error: unknown backend(s) nope; choose from torch-eager,"),
        (["--sizes", "64"], "error: size '64' is not WIDTHxHEIGHT with positive integers"),
        (["--runs", "0"], "error: --runs, --warmup and --threads must be >= 1"),
        (["--device", "tpu"], "error: argument --device: invalid choice: 'tpu'"),
    ],
)
def test_cli_bad_arguments(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_baseline_for_each_device():
    assert baseline_for("cpu").name == "torch-eager" and baseline_for("cuda").name == "torch-cuda-fp32"


def test_tiling_overhead_is_timed_in_alternating_calls(tiny_checkpoint, tmp_path):
    out = tmp_path / "report"
    rc = main(
        [
            "--model",
            str(tiny_checkpoint),
            "--backends",
            "runtime,runtime-whole",
            "--sizes",
            "64x64,1100x64",
            "--runs",
            "3",
            "--quality-images",
            "2",
            "--threads",
            "1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    (pair,) = results["pairs"]
    assert (pair["tiled"], pair["whole"], pair["size"], pair["status"]) == (
        "runtime",
        "runtime-whole",
        "1100x64",
        "ok",
    )
    tiled, whole = pair["latencies_ms"]
    assert len(tiled) == len(whole) == 3
    assert pair["median_ratio"] == pytest.approx(float(np.median(np.divide(tiled, whole))))
    target = {t["name"]: t for t in results["targets"]}["runtime-tiling-overhead"]
    assert target["measured"] == pytest.approx(pair["median_ratio"] - 1)
    assert "1100x64" in target["description"] and "alternating-call rounds" in target["note"]


def test_self_ensemble_backend_runs_the_ensemble(tiny_checkpoint, tmp_path):
    out = tmp_path / "report"
    rc = main(
        [
            "--model",
            str(tiny_checkpoint),
            "--backends",
            "runtime,runtime-x2",
            "--sizes",
            "64x64",
            "--runs",
            "1",
            "--quality-images",
            "2",
            "--threads",
            "1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["backends"]["runtime-x2"]["self_ensemble"] == 2
    quality = results["quality"]["backends"]
    assert quality["runtime-x2"]["psnr_db"] != pytest.approx(quality["runtime"]["psnr_db"], abs=1e-6)
    assert "`runtime-x2` average passes over flipped and transposed copies" in (out / "README.md").read_text()


def test_openvino_rows_match_onnxruntime_and_report_their_precision(tiny_bundle):
    from benchmarks.runners import Unavailable, make_runner
    from common.cpu import cpu_flags, cpu_has_bf16

    image = np.random.default_rng(0).random((40, 52, 3), dtype=np.float32)
    reference = make_runner(BY_NAME["ort-fp32"], None, tiny_bundle[0], 1)(image)
    openvino = make_runner(BY_NAME["openvino-fp32"], None, tiny_bundle[0], 1)
    assert "openvino" in openvino.description and "fp32" in openvino.description
    np.testing.assert_allclose(openvino(image), reference, atol=1e-5)
    runtime = make_runner(BY_NAME["runtime"], None, tiny_bundle[0], 1)
    assert runtime.precision in ("fp32", "bf16") and runtime.description.startswith("openvino")
    assert make_runner(BY_NAME["runtime-ort"], None, tiny_bundle[0], 1).description.startswith("onnxruntime")
    if cpu_has_bf16(cpu_flags()):
        np.testing.assert_allclose(
            make_runner(BY_NAME["openvino-bf16"], None, tiny_bundle[0], 1)(image), reference, atol=5e-2
        )
    else:
        with pytest.raises(Unavailable, match="no native BF16"):
            make_runner(BY_NAME["openvino-bf16"], None, tiny_bundle[0], 1)


def test_bf16_autocast_peer_is_skipped_without_native_bf16(tiny_checkpoint, monkeypatch):
    from benchmarks import runners

    monkeypatch.setattr(runners, "cpu_flags", lambda: {"avx2", "fma"})
    with pytest.raises(runners.Unavailable, match="none of avx512_bf16, amx_bf16: bf16 autocast"):
        runners.make_runner(BY_NAME["torch-compile-bf16"], tiny_checkpoint, None, 1)


# ---------------------------------------------------------------- runtime overhead


def test_graph_timer_counts_every_call_and_passes_results_through():
    from benchmarks.overhead import GraphTimer

    timer = GraphTimer(lambda graph, inputs: {graph: inputs["x"] * 2})
    assert timer("restore", {"x": 3}) == {"restore": 6}
    assert timer("estimate", {"x": 1}) == {"estimate": 2}
    assert timer.calls == 2 and timer.seconds >= 0.0


def test_overhead_splits_the_call_into_graph_and_outside(tiny_bundle):
    from benchmarks.overhead import markdown, measure
    from runtime import Deblurrer

    with Deblurrer(tiny_bundle[0], backend="onnxruntime", threads=1, tile=96) as deblurrer:
        row = measure(deblurrer, 200, 150, rounds=2)
    # 200x150 in 96-pixel tiles: several estimate and restore calls, and the condition call.
    assert row["graph_calls"] > 3 and row["rounds"] == 2
    assert 0.0 < row["graph_ms"] <= row["total_ms"]
    assert row["outside_ms"] == pytest.approx(row["total_ms"] - row["graph_ms"])
    assert row["share"] == pytest.approx(row["outside_ms"] / row["total_ms"])
    report = markdown(
        {
            "bundle": "b",
            "backend": "onnxruntime",
            "threads": 1,
            "rounds": 2,
            "machine": {"cpu": "c", "cpu_features": ["avx2"], "git_commit": "abc"},
            "sizes": {"200x150": row},
        }
    )
    assert "| 200x150 |" in report and f"{row['share']:.1%}" in report


def test_overhead_cli_refuses_bad_arguments(tmp_path, capsys):
    from benchmarks.overhead import main

    with pytest.raises(SystemExit):
        main(["--rounds", "0", "--out", str(tmp_path)])
    assert "--rounds must be >= 1" in capsys.readouterr().err
    assert main(["--bundle", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "overhead.md").exists()
