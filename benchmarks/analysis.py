"""Derived figures: throughput, GFLOP/s, ratios to the baseline, fidelity, quality, targets.

All operate on the ``results`` dict of ``results.json`` (see ``benchmarks/README.md``).
"""

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from benchmarks.backends import BY_NAME, baseline_for
from benchmarks.quality import compare, mean_scores
from benchmarks.stats import gflops, megapixels_per_s, overhead, ratio, speedup

#: Per device: (the runtime's default path, the best PyTorch paths (the faster one counts),
#: the whole-image twin).
TARGET_PATHS = {
    "cpu": ("runtime", ("torch-compile", "torch-compile-bf16"), "runtime-whole"),
    "cuda": ("runtime-cuda", ("torch-cuda-compile",), None),
}
TARGET_SIZE = "1024x1024"
LARGE_SIZE = "3840x2160"
#: The 24-megapixel photo: time and peak RSS of the runtime's default path.
PHOTO_SIZE = "6000x4000"
MAX_PHOTO_MS = 12000.0
MIN_SPEEDUP_EAGER = 2.0
#: Per device: the runtime's default path against the best PyTorch path.
MIN_SPEEDUP_BEST = {"cpu": 3.0, "cuda": 1.2}
MAX_TILING_OVERHEAD = 0.10
#: Share of the BF16 GEMM peak the runtime's default path reaches where it runs BF16.
MIN_BF16_PEAK_SHARE = 0.5


def cell_index(results: dict) -> Dict[tuple, dict]:
    """(backend, size) -> cell."""
    return {(c["backend"], c["size"]): c for c in results["cells"]}


def _ok(cell: Optional[dict]) -> bool:
    return cell is not None and cell.get("status") == "ok"


def peak_gflops(results: dict, device: str, precision: str) -> Optional[float]:
    """The measured GEMM peak of a path's own precision: FP16 for FP16 GPU paths, BF16 for
    BF16 paths (None where it was not measured), else FP32."""
    peak = results.get("gemm_peak", {}).get(device) or {}
    key = {("cuda", "fp16"): "fp16_gflops"}.get(
        (device, precision), f"{precision}_gflops" if precision == "bf16" else "fp32_gflops"
    )
    return peak.get(key)


def precision_of(results: dict, name: str) -> str:
    """The precision a backend ran: the worker's report (the runtime's ``best``), else its spec's."""
    return results.get("backends", {}).get(name, {}).get("precision") or BY_NAME[name].precision


def derive(results: dict) -> None:
    """Add throughput, GFLOP/s, share of peak and ratios to the baseline to every ok cell."""
    cells = cell_index(results)
    macs = results["model"]["macs_per_pixel"]
    for cell in results["cells"]:
        if not _ok(cell):
            continue
        spec = BY_NAME[cell["backend"]]
        seconds = cell["median_ms"] / 1e3
        cell["megapixels_per_s"] = megapixels_per_s(cell["pixels"], seconds)
        cell["gflops"] = gflops(macs, cell["pixels"], seconds)
        cell["precision"] = precision_of(results, cell["backend"])
        cell["fraction_of_peak"] = ratio(cell["gflops"], peak_gflops(results, spec.device, cell["precision"]))
        if spec.compiles:
            cell["compile_ms"] = max(0.0, cell["first_call_ms"] - cell["median_ms"])
        base = cells.get((baseline_for(spec.device).name, cell["size"]))
        cell["baseline"] = baseline_for(spec.device).name
        cell["speedup_vs_baseline"] = speedup(base["median_ms"], cell["median_ms"]) if _ok(base) else None
        cell["peak_rss_vs_baseline"] = (
            ratio(cell["peak_rss_bytes"], base["peak_rss_bytes"]) if _ok(base) else None
        )


def add_fidelity(results: dict, work: Path) -> None:
    """PSNR / SSIM of every ok cell's output against its device's baseline output."""
    cells = cell_index(results)
    for cell in results["cells"]:
        if not _ok(cell):
            continue
        base = cells.get((baseline_for(BY_NAME[cell["backend"]].device).name, cell["size"]))
        if base is cell:
            cell["fidelity"] = {"reference": True}
        elif not _ok(base):
            cell["fidelity"] = {"error": "no baseline output at this size"}
        else:
            scores = compare(np.load(work / cell["output"]), np.load(work / base["output"]))
            cell["fidelity"] = {
                "psnr_db": finite(scores["psnr_db"]),
                "ssim": scores["ssim"],
                "identical": bool(np.isinf(scores["psnr_db"])),
            }


def finite(value: float) -> Optional[float]:
    """JSON-safe float: non-finite values (PSNR of identical images) become None."""
    return float(value) if np.isfinite(value) else None


def add_quality(results: dict, work: Path, validation: Optional[Path]) -> None:
    """Restoration quality on the validation images, beside the blurry input's scores."""
    quality = results["quality"]
    if validation is None:
        return
    data = np.load(validation)
    sharp = data["sharp"]
    quality["input"] = mean_scores(data["blurry"], sharp)
    for name, entry in quality["backends"].items():
        if entry.get("status") == "ok":
            entry.update(mean_scores(np.load(work / entry["output"]), sharp))
            entry["psnr_gain_db"] = entry["psnr_db"] - quality["input"]["psnr_db"]


def _target(
    name: str,
    description: str,
    wanted: str,
    measured: Optional[float],
    threshold: float,
    higher_is_better: bool,
    unit: str,
    note: str = "",
) -> dict:
    if measured is None:
        return {
            "name": name,
            "description": description,
            "target": wanted,
            "measured": None,
            "met": None,
            "margin": None,
            "note": note or "not measured",
        }
    met = measured >= threshold if higher_is_better else measured <= threshold
    margin = measured - threshold if higher_is_better else threshold - measured
    return {
        "name": name,
        "description": description,
        "target": wanted,
        "measured": measured,
        "met": bool(met),
        "margin": margin,
        "unit": unit,
        "note": note,
    }


def _tiling_size(
    cells: Dict[tuple, dict], tiled: str, whole: str, sizes: List[str], tile: int
) -> Optional[str]:
    """The largest size that both paths measured and that needs more than one tile."""
    both = [
        s
        for s in sizes
        if _ok(cells.get((tiled, s)))
        and _ok(cells.get((whole, s)))
        and max(cells[(tiled, s)]["width"], cells[(tiled, s)]["height"]) > tile
    ]
    return both[-1] if both else None


def tiling_pairs(results: dict, tile: int) -> List[Tuple[str, str, str]]:
    """(tiled path, whole-image twin, size) of each tiling-overhead target the cells allow."""
    cells = cell_index(results)
    pairs = []
    for device in results["settings"]["devices"]:
        runtime, _, whole = TARGET_PATHS[device]
        size = _tiling_size(cells, runtime, whole, results["settings"]["sizes"], tile) if whole else None
        if whole and size:
            pairs.append((runtime, whole, size))
    return pairs


def _paired(results: dict, tiled: str, whole: str, size: Optional[str]) -> Optional[dict]:
    """The ok alternating-calls measurement of ``tiled`` against ``whole`` at ``size``."""
    return next(
        (
            p
            for p in results.get("pairs", [])
            if p.get("status") == "ok" and (p["tiled"], p["whole"], p["size"]) == (tiled, whole, size)
        ),
        None,
    )


def _tiling_target(results: dict, cells: Dict[tuple, dict], runtime: str, whole: str, tile: int) -> dict:
    """Tiling overhead from alternating calls where they ran, else from the two cells."""
    size = _tiling_size(cells, runtime, whole, results["settings"]["sizes"], tile)
    separate = (
        overhead(cells[(runtime, size)]["median_ms"], cells[(whole, size)]["median_ms"]) if size else None
    )
    pair = _paired(results, runtime, whole, size)
    if pair:
        value = pair["median_ratio"] - 1.0
        note = (
            f"median of {len(pair['latencies_ms'][0])} alternating-call rounds; "
            f"separate cells: {separate:.0%}"
        )
    else:
        value = separate
        note = "from separate cells" if size else "needs a size over one tile measured by both paths"
    return _target(
        f"{runtime}-tiling-overhead",
        f"tiling overhead: {runtime} (tile {tile}) vs {whole} at {size or '-'}",
        f"<= {MAX_TILING_OVERHEAD:.0%}",
        value,
        MAX_TILING_OVERHEAD,
        False,
        "fraction",
        note,
    )


def _best(cells: Dict[tuple, dict], names: Tuple[str, ...], size: str) -> Optional[dict]:
    """The fastest ok cell of ``names`` at ``size``."""
    found = [cells[(n, size)] for n in names if _ok(cells.get((n, size)))]
    return min(found, key=lambda c: c["median_ms"]) if found else None


def _speed_targets(cells: Dict[tuple, dict], device: str, runtime: str, peers: Tuple[str, ...]) -> List[dict]:
    """The runtime's default path against PyTorch eager FP32 and the best PyTorch path."""
    rt = cells.get((runtime, TARGET_SIZE))
    targets = []
    base = baseline_for(device).name
    for names, threshold, label in (
        ((base,), MIN_SPEEDUP_EAGER, "PyTorch eager FP32"),
        (peers, MIN_SPEEDUP_BEST[device], "the best PyTorch path (" + " / ".join(peers) + ")"),
    ):
        ref = _best(cells, names, TARGET_SIZE)
        value = speedup(ref["median_ms"], rt["median_ms"]) if _ok(rt) and ref else None
        note = (
            f"vs {ref['backend']}"
            if value and len(names) > 1
            else ""
            if value
            else f"needs {runtime} and {' or '.join(names)} at {TARGET_SIZE}"
        )
        targets.append(
            _target(
                f"{runtime}-vs-{names[0]}",
                f"{runtime} (the runtime's default path) vs {label} at {TARGET_SIZE}",
                f">= {threshold:g}x",
                value,
                threshold,
                True,
                "x",
                note,
            )
        )
    return targets


def _bf16_peak_target(cells: Dict[tuple, dict], runtime: str) -> dict:
    rt = cells.get((runtime, TARGET_SIZE))
    bf16 = _ok(rt) and rt.get("precision") == "bf16"
    value = rt.get("fraction_of_peak") if bf16 else None
    note = (
        ""
        if value is not None
        else "measured BF16 GEMM peak missing"
        if bf16
        else "the path did not run BF16 here (no native BF16 on this CPU)"
        if _ok(rt)
        else f"needs {runtime} at {TARGET_SIZE}"
    )
    return _target(
        f"{runtime}-bf16-peak-share",
        f"{runtime} at {TARGET_SIZE}: share of the BF16 GEMM peak",
        f">= {MIN_BF16_PEAK_SHARE:.0%}",
        value,
        MIN_BF16_PEAK_SHARE,
        True,
        "fraction",
        note,
    )


def _photo_targets(cells: Dict[tuple, dict], runtime: str, rss_limit_bytes: int) -> List[dict]:
    photo = cells.get((runtime, PHOTO_SIZE))
    note = "" if _ok(photo) else f"needs {runtime} at {PHOTO_SIZE}"
    return [
        _target(
            f"{runtime}-photo-time",
            f"{runtime}: a 24 MP photo ({PHOTO_SIZE}), median time",
            f"<= {MAX_PHOTO_MS:.0f} ms",
            photo["median_ms"] if _ok(photo) else None,
            MAX_PHOTO_MS,
            False,
            "ms",
            note,
        ),
        _target(
            f"{runtime}-photo-memory",
            f"{runtime}: a 24 MP photo ({PHOTO_SIZE}), peak RSS",
            f"<= {rss_limit_bytes / 2**20:.0f} MiB",
            photo["peak_rss_bytes"] / 2**20 if _ok(photo) else None,
            rss_limit_bytes / 2**20,
            False,
            "MiB",
            note,
        ),
    ]


def evaluate_targets(results: dict, rss_limit_bytes: int, tile: int) -> List[dict]:
    """The deployment targets, each met / missed and by how much."""
    cells = cell_index(results)
    targets = []
    for device in results["settings"]["devices"]:
        runtime, peers, whole = TARGET_PATHS[device]
        targets += _speed_targets(cells, device, runtime, peers)
        if whole:
            targets.append(_tiling_target(results, cells, runtime, whole, tile))
        large = cells.get((runtime, LARGE_SIZE))
        rss = large["peak_rss_bytes"] if _ok(large) else None
        whole_large = cells.get((whole, LARGE_SIZE)) if whole else None
        note = (
            f"whole-image peak RSS {whole_large['peak_rss_bytes'] / 2**20:.0f} MiB"
            if _ok(whole_large)
            else ""
            if rss
            else f"needs {runtime} at {LARGE_SIZE}"
        )
        targets.append(
            _target(
                f"{runtime}-large-memory",
                f"{runtime} at {LARGE_SIZE}: peak RSS of the process (bounded memory)",
                f"<= {rss_limit_bytes / 2**20:.0f} MiB",
                None if rss is None else rss / 2**20,
                rss_limit_bytes / 2**20,
                False,
                "MiB",
                note,
            )
        )
        if device == "cpu":
            targets.append(_bf16_peak_target(cells, runtime))
            targets += _photo_targets(cells, runtime, rss_limit_bytes)
    return targets
