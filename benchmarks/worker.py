"""Measure one backend in its own process; print one JSON object per line.

    python -m benchmarks.worker --backend ort-fp32 --checkpoint CKPT --bundle BUNDLE \
        --inputs WORK --out WORK --sizes 256x256,512x512 --runs 5 --threads 2

Lines (``event``): ``setup`` (ok / skipped / error, once), ``cell`` (one per size:
latencies, memory, output file), ``quality`` (outputs on the validation images saved).
With ``--pair-with OTHER`` the worker instead times the two backends in alternating
calls, one ``pair`` line per size: a drift of the machine's speed then hits both alike.
The parent (``benchmarks.run``) reads them; a crash or a time-out loses only the
lines not printed yet. Outputs are saved as ``<backend>_<WxH>.npy`` for the
parent's fidelity metrics.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from benchmarks import memory
from benchmarks.backends import BY_NAME, BackendSpec
from benchmarks.inputs import input_path, parse_sizes, size_label
from benchmarks.runners import Runner, Unavailable, make_runner
from benchmarks.stats import summarise

#: Whole-image sizes are skipped when their predicted peak would exceed this share
#: of the memory available.
MEMORY_HEADROOM = 0.8


def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def time_runs(
    runner: Runner, image: np.ndarray, runs: int, warmup: int, cell_seconds: float
) -> Tuple[List[float], float, np.ndarray]:
    """Warm up, then time up to ``runs`` calls (at least ``min(3, runs)``, then stop
    once ``cell_seconds`` are spent).

    Returns:
        (latencies in seconds, the first call's time in seconds, the last output).
    """
    start = time.perf_counter()
    out = runner(image)
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        out = runner(image)
    latencies: List[float] = []
    while len(latencies) < runs:
        start = time.perf_counter()
        out = runner(image)
        latencies.append(time.perf_counter() - start)
        if sum(latencies) > cell_seconds and len(latencies) >= min(3, runs):
            break
    return latencies, first, out


def time_pair(
    runners: Tuple[Runner, Runner], image: np.ndarray, rounds: int, seconds: float
) -> Tuple[List[float], List[float]]:
    """One warm-up call each, then rounds of one call each, the order alternating
    (ab, ba, ab, ...); stop after ``rounds``, or once ``seconds`` are spent after 3.

    Returns:
        (latencies of the first runner, of the second) in seconds.
    """
    for runner in runners:
        runner(image)
    times: Tuple[List[float], List[float]] = ([], [])
    while len(times[0]) < rounds:
        for k in (0, 1) if len(times[0]) % 2 == 0 else (1, 0):
            start = time.perf_counter()
            runners[k](image)
            times[k].append(time.perf_counter() - start)
        if sum(times[0]) + sum(times[1]) > seconds and len(times[0]) >= min(3, rounds):
            break
    return times


def run_pair(args: argparse.Namespace) -> int:
    """Time ``--backend`` against ``--pair-with`` in alternating calls at each size."""
    specs = (BY_NAME[args.backend], BY_NAME[args.pair_with])
    try:
        runners = tuple(make_runner(spec, args.checkpoint, args.bundle, args.threads) for spec in specs)
    except Exception as exc:  # any library's failure is a result to report, not a crash
        emit("setup", status="error", error=one_line(exc))
        return 0
    emit("setup", status="ok")
    for width, height in args.sizes:
        label = size_label(width, height)
        try:
            for runner in runners:
                runner.prepare(height, width)
            image = np.load(input_path(args.inputs, width, height))
            first, second = time_pair(runners, image, args.runs, 2 * args.cell_seconds)
        except Exception as exc:
            emit("pair", size=label, status="error", error=one_line(exc))
            continue
        ratios = [a / b for a, b in zip(first, second)]
        emit(
            "pair",
            size=label,
            status="ok",
            backends=[s.name for s in specs],
            latencies_ms=[[1e3 * t for t in first], [1e3 * t for t in second]],
            median_ratio=float(np.median(ratios)),
        )
    return 0


def memory_guard(spec: BackendSpec, growth_per_pixel: Optional[float], pixels: int) -> Optional[str]:
    """Why a whole-image size would not fit in memory, predicted from smaller sizes; else None."""
    available = memory.available_bytes()
    if spec.tiled or growth_per_pixel is None or available is None or spec.device != "cpu":
        return None
    predicted = growth_per_pixel * pixels
    if predicted > MEMORY_HEADROOM * available:
        return (
            f"predicted peak RSS growth {predicted / 2**30:.1f} GiB exceeds "
            f"{MEMORY_HEADROOM:.0%} of the {available / 2**30:.1f} GiB available"
        )
    return None


def measure_size(
    runner: Runner, spec: BackendSpec, args: argparse.Namespace, width: int, height: int
) -> dict:
    """Time one size and save its output; returns the ``cell`` fields."""
    runner.prepare(height, width)
    image = np.load(input_path(args.inputs, width, height))
    memory.reset_peak_rss()
    rss_base = memory.rss_bytes()
    runner.reset_device_peak()
    latencies, first, out = time_runs(runner, image, args.runs, args.warmup, args.cell_seconds)
    peak = memory.peak_rss_bytes()
    out_file = Path(args.out) / f"{spec.name}_{size_label(width, height)}.npy"
    np.save(out_file, out.astype(np.float32, copy=False))
    stats = summarise(latencies)
    return {
        "status": "ok",
        **stats,
        "latencies_ms": [1e3 * t for t in latencies],
        "first_call_ms": 1e3 * first,
        "warmup": args.warmup,
        "peak_rss_bytes": peak,
        "rss_base_bytes": rss_base,
        "device_peak_bytes": runner.device_peak_bytes(),
        "description": runner.description,
        "output": out_file.name,
    }


def run_quality(runner: Runner, spec: BackendSpec, quality: Path, out: Path) -> str:
    """Run the validation images; returns the file of the stacked outputs."""
    blurry = np.load(quality)["blurry"]
    runner.prepare(*blurry.shape[1:3])
    outputs = np.stack([runner(np.ascontiguousarray(b, dtype=np.float32)) for b in blurry])
    out_file = Path(out) / f"{spec.name}_quality.npy"
    np.save(out_file, outputs)
    return out_file.name


def run_backend(args: argparse.Namespace) -> int:
    spec = BY_NAME[args.backend]
    start = time.perf_counter()
    try:
        runner = make_runner(spec, args.checkpoint, args.bundle, args.threads)
    except (Unavailable, ImportError) as exc:
        emit("setup", status="skipped", reason=str(exc) if isinstance(exc, Unavailable) else one_line(exc))
        return 0
    except Exception as exc:  # any library's failure is a result to report, not a crash
        emit("setup", status="error", error=one_line(exc))
        return 0
    emit(
        "setup",
        status="ok",
        setup_ms=1e3 * (time.perf_counter() - start),
        description=runner.description,
        precision=runner.precision or spec.precision,
    )
    growth_per_pixel: Optional[float] = None
    for width, height in args.sizes:
        label, pixels = size_label(width, height), width * height
        reason = memory_guard(spec, growth_per_pixel, pixels)
        if reason:
            emit("cell", size=label, status="skipped", reason=reason)
            continue
        try:
            cell = measure_size(runner, spec, args, width, height)
        except MemoryError:
            emit("cell", size=label, status="error", error="out of memory")
            continue
        except Exception as exc:
            emit("cell", size=label, status="error", error=one_line(exc))
            continue
        if cell["rss_base_bytes"] is not None:
            # From the largest size so far (sizes come in order of pixels): fixed costs
            # inflate the per-pixel growth of small sizes (2.3 KB/px at 512x512 against
            # 0.9 at 1920x1080 for the whole-image runtime), and 4K was skipped for it.
            growth_per_pixel = (cell["peak_rss_bytes"] - cell["rss_base_bytes"]) / pixels
        emit("cell", size=label, **cell)
    # After the sizes, so that a compile for the validation size counts in its cell.
    if args.quality:
        try:
            emit("quality", status="ok", output=run_quality(runner, spec, args.quality, args.out))
        except Exception as exc:
            emit("quality", status="error", error=one_line(exc))
    return 0


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", required=True, choices=sorted(BY_NAME))
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--inputs", type=Path, required=True, help="folder of input_WxH.npy")
    parser.add_argument("--out", type=Path, required=True, help="folder for the outputs")
    parser.add_argument("--sizes", required=True, help="WxH[,WxH...]")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument(
        "--cell-seconds",
        type=float,
        default=60.0,
        help="stop timing a size after this long (at least 3 runs)",
    )
    parser.add_argument("--quality", type=Path, default=None, help="validation .npz (blurry images)")
    parser.add_argument(
        "--pair-with",
        choices=sorted(BY_NAME),
        default=None,
        help="time --backend against this one in alternating calls instead",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 1 or args.threads < 1:
        parser.error("--runs, --warmup and --threads must be >= 1")
    try:
        args.sizes = parse_sizes(args.sizes)
    except ValueError as exc:
        parser.error(str(exc))
    return args


if __name__ == "__main__":
    arguments = parse_args()
    sys.exit(run_pair(arguments) if arguments.pair_with else run_backend(arguments))
