"""Derived figures: throughput, GFLOP/s, ratios to the baseline, fidelity, quality, targets.

All operate on the ``results`` dict of ``results.json`` (see ``benchmarks/README.md``).
"""
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from benchmarks.backends import BY_NAME, baseline_for
from benchmarks.quality import compare, mean_scores
from benchmarks.stats import gflops, megapixels_per_s, overhead, ratio, speedup

#: Per device: (the runtime's default path, the torch.compile path, the whole-image twin).
TARGET_PATHS = {"cpu": ("runtime", "torch-compile", "runtime-whole"),
                "cuda": ("runtime-cuda", "torch-cuda-compile", None)}
TARGET_SIZE = "1024x1024"
LARGE_SIZE = "3840x2160"
MIN_SPEEDUP_EAGER = 2.0
MIN_SPEEDUP_COMPILE = 1.2
MAX_TILING_OVERHEAD = 0.15


def cell_index(results: dict) -> Dict[tuple, dict]:
    """(backend, size) -> cell."""
    return {(c["backend"], c["size"]): c for c in results["cells"]}


def _ok(cell: Optional[dict]) -> bool:
    return cell is not None and cell.get("status") == "ok"


def peak_gflops(results: dict, device: str, precision: str) -> Optional[float]:
    """The measured GEMM peak a backend is held against (FP16 peak for FP16 GPU paths)."""
    peak = results.get("gemm_peak", {}).get(device) or {}
    key = "fp16_gflops" if device == "cuda" and precision == "fp16" else "fp32_gflops"
    return peak.get(key)


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
        cell["fraction_of_peak"] = ratio(cell["gflops"], peak_gflops(results, spec.device, spec.precision))
        if spec.compiles:
            cell["compile_ms"] = max(0.0, cell["first_call_ms"] - cell["median_ms"])
        base = cells.get((baseline_for(spec.device).name, cell["size"]))
        cell["baseline"] = baseline_for(spec.device).name
        cell["speedup_vs_baseline"] = speedup(base["median_ms"], cell["median_ms"]) if _ok(base) else None
        cell["peak_rss_vs_baseline"] = (ratio(cell["peak_rss_bytes"], base["peak_rss_bytes"])
                                        if _ok(base) else None)


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
            cell["fidelity"] = {"psnr_db": finite(scores["psnr_db"]), "ssim": scores["ssim"],
                                "identical": bool(np.isinf(scores["psnr_db"]))}


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


def _target(name: str, description: str, wanted: str, measured: Optional[float], threshold: float,
            higher_is_better: bool, unit: str, note: str = "") -> dict:
    if measured is None:
        return {"name": name, "description": description, "target": wanted, "measured": None,
                "met": None, "margin": None, "note": note or "not measured"}
    met = measured >= threshold if higher_is_better else measured <= threshold
    margin = measured - threshold if higher_is_better else threshold - measured
    return {"name": name, "description": description, "target": wanted, "measured": measured,
            "met": bool(met), "margin": margin, "unit": unit, "note": note}


def _tiling_size(cells: Dict[tuple, dict], tiled: str, whole: str, sizes: List[str],
                 tile: int) -> Optional[str]:
    """The largest size that both paths measured and that needs more than one tile."""
    both = [s for s in sizes if _ok(cells.get((tiled, s))) and _ok(cells.get((whole, s)))
            and max(cells[(tiled, s)]["width"], cells[(tiled, s)]["height"]) > tile]
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
    return next((p for p in results.get("pairs", []) if p.get("status") == "ok"
                 and (p["tiled"], p["whole"], p["size"]) == (tiled, whole, size)), None)


def _tiling_target(results: dict, cells: Dict[tuple, dict], runtime: str, whole: str,
                   tile: int) -> dict:
    """Tiling overhead from alternating calls where they ran, else from the two cells."""
    size = _tiling_size(cells, runtime, whole, results["settings"]["sizes"], tile)
    separate = (overhead(cells[(runtime, size)]["median_ms"], cells[(whole, size)]["median_ms"])
                if size else None)
    pair = _paired(results, runtime, whole, size)
    if pair:
        value = pair["median_ratio"] - 1.0
        note = (f"median of {len(pair['latencies_ms'][0])} alternating-call rounds; "
                f"separate cells: {separate:.0%}")
    else:
        value = separate
        note = "from separate cells" if size else "needs a size over one tile measured by both paths"
    return _target(f"{runtime}-tiling-overhead",
                   f"tiling overhead: {runtime} (tile {tile}) vs {whole} at {size or '-'}",
                   f"<= {MAX_TILING_OVERHEAD:.0%}", value, MAX_TILING_OVERHEAD, False, "fraction", note)


def evaluate_targets(results: dict, rss_limit_bytes: int, tile: int) -> List[dict]:
    """The deployment targets, each met / missed and by how much."""
    cells = cell_index(results)
    targets = []
    for device in results["settings"]["devices"]:
        runtime, compiled, whole = TARGET_PATHS[device]
        base = baseline_for(device).name
        rt = cells.get((runtime, TARGET_SIZE))
        for other, threshold, label in ((base, MIN_SPEEDUP_EAGER, "PyTorch eager FP32"),
                                        (compiled, MIN_SPEEDUP_COMPILE, "torch.compile")):
            ref = cells.get((other, TARGET_SIZE))
            value = speedup(ref["median_ms"], rt["median_ms"]) if _ok(rt) and _ok(ref) else None
            targets.append(_target(f"{runtime}-vs-{other}",
                                   f"{runtime} (the runtime's default path) vs {label} at {TARGET_SIZE}",
                                   f">= {threshold:g}x", value, threshold, True, "x",
                                   "" if value else f"needs {runtime} and {other} at {TARGET_SIZE}"))
        if whole:
            targets.append(_tiling_target(results, cells, runtime, whole, tile))
        large = cells.get((runtime, LARGE_SIZE))
        rss = large["peak_rss_bytes"] if _ok(large) else None
        whole_large = cells.get((whole, LARGE_SIZE)) if whole else None
        note = (f"whole-image peak RSS {whole_large['peak_rss_bytes'] / 2**20:.0f} MiB"
                if _ok(whole_large) else "" if rss else f"needs {runtime} at {LARGE_SIZE}")
        targets.append(_target(f"{runtime}-large-memory",
                               f"{runtime} at {LARGE_SIZE}: peak RSS of the process (bounded memory)",
                               f"<= {rss_limit_bytes / 2**20:.0f} MiB",
                               None if rss is None else rss / 2**20, rss_limit_bytes / 2**20, False,
                               "MiB", note))
    return targets
