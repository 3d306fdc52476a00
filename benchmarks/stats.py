"""Statistics of timed runs and the figures derived from them.

Pure functions on plain numbers: the report and the tests share them.
"""

import math
from typing import Optional, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation (NumPy's default).

    Raises:
        ValueError: ``values`` is empty or ``q`` lies outside [0, 100].
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must lie in [0, 100], got {q}")
    ordered = sorted(float(v) for v in values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarise(latencies_s: Sequence[float]) -> dict:
    """Median, p90, min and mean of latencies in seconds, as milliseconds."""
    return {
        "runs": len(latencies_s),
        "median_ms": 1e3 * percentile(latencies_s, 50),
        "p90_ms": 1e3 * percentile(latencies_s, 90),
        "min_ms": 1e3 * min(latencies_s),
        "mean_ms": 1e3 * sum(latencies_s) / len(latencies_s),
    }


def megapixels_per_s(pixels: int, seconds: float) -> float:
    """Throughput: ``pixels / 1e6 / seconds``."""
    return pixels / 1e6 / seconds


def gflops(macs_per_pixel: float, pixels: int, seconds: float) -> float:
    """Achieved GFLOP/s, counting a multiply-accumulate as 2 FLOPs."""
    return 2.0 * macs_per_pixel * pixels / seconds / 1e9


def gemm_gflops(n: int, seconds: float) -> float:
    """GFLOP/s of one ``n x n`` by ``n x n`` matrix product taking ``seconds``."""
    return 2.0 * n**3 / seconds / 1e9


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    """``numerator / denominator``, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def speedup(baseline_ms: Optional[float], latency_ms: Optional[float]) -> Optional[float]:
    """How many times faster than the baseline: ``baseline / latency``."""
    return ratio(baseline_ms, latency_ms)


def overhead(tiled_ms: Optional[float], whole_ms: Optional[float]) -> Optional[float]:
    """Relative extra time of a tiled run over the whole-image run: ``tiled / whole - 1``."""
    r = ratio(tiled_ms, whole_ms)
    return None if r is None else r - 1.0
