"""Measure every deployment path on this machine and write a report.

    python -m benchmarks.run                      # CPU paths, all sizes (make bench)
    python -m benchmarks.run --quick --no-compile # a minute or two: 2 sizes, 3 runs
    python -m benchmarks.run --device cuda --budget-seconds 150 --out DIR   (benchmarks/gpu.sh)

Each backend runs in its own worker process (``benchmarks.worker``); the report goes
to ``benchmarks/reports/<machine>/`` (README.md, results.json, plots).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional, Tuple

from tqdm import tqdm

from benchmarks import analysis, launch
from benchmarks.backends import BY_NAME, LARGE_MPIX, PHOTO_MPIX, SPECS, BackendSpec, select
from benchmarks.inputs import DEFAULT_SIZES, QUICK_SIZES, parse_sizes, size_label, write_inputs
from benchmarks.machine import REPO, describe_machine, machine_slug, usable_cpus
from benchmarks.model_source import ModelError, resolve_model, shown
from benchmarks.prepare import run_step
from benchmarks.quality import write_validation
from benchmarks.report import write_report
from benchmarks.runners import DEFAULT_TILE, precheck

SCHEMA = "defocus-deblur-benchmark/1"
DEFAULT_RSS_LIMIT_MIB = 2048


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="checkpoint folder (default: models/default, else a random small model)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="cpu")
    parser.add_argument(
        "--backends",
        default=None,
        help="comma-separated names, any device (default: "
        "all of --device): " + ", ".join(s.name for s in SPECS),
    )
    parser.add_argument("--sizes", default=None, help=f"WxH list (default: {','.join(DEFAULT_SIZES)})")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"sizes {','.join(QUICK_SIZES)}, 3 runs, 4 quality images, 20 s a size",
    )
    parser.add_argument("--runs", type=int, default=None, help="timed runs per size (default 5; quick 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    parser.add_argument("--threads", type=int, default=usable_cpus(), help="threads of every CPU backend")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile backends")
    parser.add_argument(
        "--cell-seconds",
        type=float,
        default=None,
        help="stop timing a size after this long, >= 3 runs (default 60; quick 20)",
    )
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=None,
        help="hard wall-clock budget of the measurements; later backends are skipped",
    )
    parser.add_argument(
        "--quality-images",
        type=int,
        default=None,
        help="rendered validation images for quality vs ground truth (default 12; quick 4)",
    )
    parser.add_argument(
        "--rss-limit-mib",
        type=float,
        default=DEFAULT_RSS_LIMIT_MIB,
        help="bound of the 3840x2160 tiled run's peak RSS (target)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="report folder (default: benchmarks/reports/<machine>)"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.sizes = args.sizes or ",".join(QUICK_SIZES if quick else DEFAULT_SIZES)
    args.runs = args.runs if args.runs is not None else (3 if quick else 5)
    args.cell_seconds = args.cell_seconds if args.cell_seconds is not None else (20.0 if quick else 60.0)
    args.quality_images = args.quality_images if args.quality_images is not None else (4 if quick else 12)
    if min(args.runs, args.warmup, args.threads) < 1:
        parser.error("--runs, --warmup and --threads must be >= 1")
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    try:
        args.specs = select(args.backends.split(",") if args.backends else None, devices, not args.no_compile)
        parse_sizes(args.sizes)
    except ValueError as exc:
        parser.error(str(exc))
    if not args.specs:
        parser.error("no backend is selected")
    args.devices = sorted({s.device for s in args.specs}, key=("cpu", "cuda").index)
    return args


def sizes_for(spec: BackendSpec, sizes: List[tuple]) -> List[str]:
    """Sizes a backend runs: those above ``LARGE_MPIX`` only for the ``large`` backends,
    above ``PHOTO_MPIX`` only for the tiled ones."""
    return [
        size_label(w, h)
        for w, h in sizes
        if (spec.large or w * h <= LARGE_MPIX * 1e6) and (spec.tiled or w * h <= PHOTO_MPIX * 1e6)
    ]


def gemm_peaks(devices: List[str], threads: int, work: Path) -> dict:
    peaks = {}
    for device in devices:
        # OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (set on some machines) throttle NumPy's
        # GEMM: the peak is measured without them, in that one process only.
        lines, error = launch.run_module(
            "benchmarks.gemm",
            ["--device", device, "--threads", str(threads)],
            threads,
            600,
            work / f"gemm_{device}.err",
            unset=launch.BLAS_TUNING_ENV,
        )
        peaks[device] = lines[-1] if lines else {"device": device, "error": error or "no output"}
        peaks[device]["blas_env_unset"] = {
            k: os.environ[k] for k in launch.BLAS_TUNING_ENV if k in os.environ
        }
    return peaks


class Collector:
    """Turns worker lines into the ``backends``, ``cells`` and ``quality`` entries."""

    def __init__(self, results: dict, sizes: List[tuple]):
        self.results = results
        self.shape = {size_label(w, h): (w, h) for w, h in sizes}

    def add_cell(self, spec: BackendSpec, size: str, **fields) -> None:
        w, h = self.shape[size]
        self.results["cells"].append(
            {"backend": spec.name, "size": size, "width": w, "height": h, "pixels": w * h, **fields}
        )

    def add_worker(
        self, spec: BackendSpec, sizes: List[str], lines: List[dict], error: Optional[str]
    ) -> None:
        setup = next((ln for ln in lines if ln["event"] == "setup"), None)
        entry = self.results["backends"][spec.name]
        if setup is None:
            entry.update(status="error", error=error or "worker printed nothing")
        else:
            entry.update({k: v for k, v in setup.items() if k != "event"})
        quality = next((ln for ln in lines if ln["event"] == "quality"), None)
        if quality is not None:
            self.results["quality"]["backends"][spec.name] = {
                k: v for k, v in quality.items() if k != "event"
            }
        done = {ln["size"]: ln for ln in lines if ln["event"] == "cell"}
        for size in sizes:
            if size in done:
                self.add_cell(spec, **{k: v for k, v in done[size].items() if k != "event"})
            elif entry["status"] != "ok":
                self.add_cell(
                    spec,
                    size,
                    status=entry["status"],
                    **{k: entry[k] for k in ("reason", "error") if k in entry},
                )
            else:
                self.add_cell(spec, size, status="error", error=error or "not measured")


def budget_left(args: argparse.Namespace, started: float) -> Tuple[Optional[float], Optional[str]]:
    """Seconds of ``--budget-seconds`` left (None without a budget), and once none are
    left, the reason to skip what comes next."""
    if args.budget_seconds is None:
        return None, None
    left = args.budget_seconds - (time.monotonic() - started)
    return left, f"budget of {args.budget_seconds:.0f} s spent" if left <= 0 else None


def measure(
    args: argparse.Namespace, results: dict, source, work: Path, validation: Optional[Path], started: float
) -> None:
    """Run every backend's worker in turn, within the budget."""
    sizes = parse_sizes(args.sizes)
    collect = Collector(results, sizes)
    plan = [(spec, sizes_for(spec, sizes)) for spec in args.specs]
    bar = tqdm(total=sum(len(s) for _, s in plan), desc="benchmark", unit="cell")
    for spec, spec_sizes in plan:
        results["backends"][spec.name] = {
            "label": spec.label,
            "device": spec.device,
            "precision": spec.precision,
            "family": spec.family,
            "tiled": spec.tiled,
            "self_ensemble": spec.self_ensemble,
            "status": "ok",
        }
        remaining, spent = budget_left(args, started)
        if args.unusable.get(spec.name):
            lines, error = [{"event": "setup", "status": "skipped", "reason": args.unusable[spec.name]}], None
        elif spec.family != "torch" and source.bundle is None:
            lines, error = [{"event": "setup", "status": "error", "error": source.bundle_error}], None
        elif spent:
            lines, error = [{"event": "setup", "status": "skipped", "reason": spent}], None
        else:
            bar.set_postfix_str(spec.name)
            lines, error = launch.run_module(
                "benchmarks.worker",
                launch.worker_args(
                    spec, spec_sizes, source.checkpoint, source.bundle, work, results["settings"], validation
                ),
                args.threads,
                remaining,
                work / f"{spec.name}.err",
                on_line=lambda ln: bar.update(ln["event"] == "cell"),
            )
        collect.add_worker(spec, spec_sizes, lines, error)
        bar.n = len(results["cells"])
        bar.refresh()
    bar.close()


def measure_pairs(args: argparse.Namespace, results: dict, source, work: Path, started: float) -> None:
    """Time each tiled path against its whole-image twin in alternating calls, at the
    size where its tiling overhead is judged: the separate cells ran minutes apart."""
    for tiled, whole, size in analysis.tiling_pairs(results, DEFAULT_TILE):
        remaining, spent = budget_left(args, started)
        if spent:
            entry = {"status": "skipped", "reason": spent}
        else:
            worker = launch.worker_args(
                BY_NAME[tiled], [size], source.checkpoint, source.bundle, work, results["settings"], None
            ) + ["--pair-with", whole]
            lines, error = launch.run_module(
                "benchmarks.worker", worker, args.threads, remaining, work / f"pair-{tiled}.err"
            )
            entry = _pair_entry(lines, error)
        results["pairs"].append({"tiled": tiled, "whole": whole, "size": size, **entry})


def _pair_entry(lines: List[dict], error: Optional[str]) -> dict:
    """The worker's ``pair`` line, else why there is none."""
    pair = next((ln for ln in lines if ln["event"] == "pair"), None)
    if pair is not None:
        return {k: v for k, v in pair.items() if k != "event"}
    setup = next((ln for ln in lines if ln["event"] == "setup"), {})
    if setup.get("status") == "error":
        return {"status": "error", "error": setup["error"]}
    return {"status": "error", "error": error or "worker printed nothing"}


def new_results(args: argparse.Namespace, machine: dict, source, stats: dict) -> dict:
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.run", *sys.argv[1:]]),
        "machine": machine,
        "model": {
            "trained": source.trained,
            "note": source.note,
            "checkpoint": shown(source.checkpoint),
            "bundle": shown(source.bundle) if source.bundle else None,
            **stats,
        },
        "settings": {
            "devices": args.devices,
            "sizes": [size_label(w, h) for w, h in parse_sizes(args.sizes)],
            "runs": args.runs,
            "warmup": args.warmup,
            "threads": args.threads,
            "cell_seconds": args.cell_seconds,
            "budget_seconds": args.budget_seconds,
            "compile": not args.no_compile,
            "tile": DEFAULT_TILE,
            "large_mpix": LARGE_MPIX,
            "photo_mpix": PHOTO_MPIX,
            "rss_limit_mib": args.rss_limit_mib,
        },
        "gemm_peak": {},
        "backends": {},
        "cells": [],
        "pairs": [],
        "quality": {"source": None, "input": None, "backends": {}},
        "targets": [],
    }


def model_stats(checkpoint: Path, work: Path) -> dict:
    """The model's figures (``benchmarks.prepare stats``, in its own process)."""
    return run_step("stats", [str(checkpoint)], work)["stats"]


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        args.unusable = {s.name: precheck(s) for s in args.specs}
        need_bundle = any(s.family != "torch" and not args.unusable[s.name] for s in args.specs)
        try:
            source = resolve_model(args.model, work, need_bundle)
        except ModelError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 2
        stats = model_stats(source.checkpoint, work)
        machine = describe_machine(args.threads)
        results = new_results(args, machine, source, stats)
        write_inputs(work, parse_sizes(args.sizes, stats["size_multiple"]))
        validation, results["quality"]["source"] = write_validation(work, args.quality_images)
        results["gemm_peak"] = gemm_peaks(args.devices, args.threads, work)
        measure(args, results, source, work, validation, started)
        measure_pairs(args, results, source, work, started)
        analysis.derive(results)
        analysis.add_fidelity(results, work)
        analysis.add_quality(results, work, validation)
        results["targets"] = analysis.evaluate_targets(results, int(args.rss_limit_mib * 2**20), DEFAULT_TILE)
        results["elapsed_s"] = time.monotonic() - started
        slug = machine_slug(machine, args.devices[-1])
        results["machine"]["slug"] = slug
        out = args.out or REPO / "benchmarks" / "reports" / slug
        summary = write_report(results, out, slug)
    except ValueError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(summary)
    print(f"report written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
