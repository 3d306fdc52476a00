"""Report figures (matplotlib, Agg backend): latency vs size, quality per backend."""

from typing import Dict, List, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from benchmarks.analysis import cell_index  # noqa: E402


def _series(results: dict, key: str) -> Dict[str, Tuple[List[float], List[float]]]:
    """Backend -> (megapixels, ``key`` values) over its ok cells with that key set."""
    series: Dict[str, Tuple[List[float], List[float]]] = {}
    for c in results["cells"]:
        if c["status"] == "ok" and c.get(key) is not None:
            xs, ys = series.setdefault(c["backend"], ([], []))
            xs.append(c["pixels"] / 1e6)
            ys.append(c[key])
    return series


def plot_latency(results: dict, path: str) -> None:
    """Latency vs megapixels (log-log) and speed-up vs the baseline, one line per backend."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for name, (xs, ys) in _series(results, "median_ms").items():
        left.plot(xs, ys, marker="o", label=name)
    left.set(
        xscale="log",
        yscale="log",
        xlabel="megapixels",
        ylabel="median latency (ms)",
        title="Latency vs image size",
    )
    for name, (xs, ys) in _series(results, "speedup_vs_baseline").items():
        right.plot(xs, ys, marker="o", label=name)
    right.axhline(1.0, color="grey", lw=0.8)
    right.set(
        xscale="log",
        xlabel="megapixels",
        ylabel="speed-up vs PyTorch eager FP32",
        title="Speed-up (same device, same run)",
    )
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def _worst_fidelity(results: dict) -> Dict[str, float]:
    """Backend -> lowest PSNR vs the FP32 reference over its sizes (identical outputs left out)."""
    worst: Dict[str, float] = {}
    for (name, _), c in cell_index(results).items():
        psnr = c.get("fidelity", {}).get("psnr_db") if c["status"] == "ok" else None
        if psnr is not None:
            worst[name] = min(worst.get(name, psnr), psnr)
    return worst


def plot_quality(results: dict, path: str) -> None:
    """Bars: fidelity to the FP32 output (worst size), and PSNR vs ground truth with the input's."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    fidelity = _worst_fidelity(results)
    left.bar(list(fidelity), list(fidelity.values()), color="tab:blue")
    left.set(ylabel="PSNR dB vs PyTorch FP32 output (worst size)", title="Numerical fidelity")
    q = results["quality"]
    if q["input"] is not None:
        names = ["blurry input"] + [n for n, e in q["backends"].items() if e.get("status") == "ok"]
        values = [q["input"]["psnr_db"]] + [q["backends"][n]["psnr_db"] for n in names[1:]]
        right.bar(names, values, color=["tab:grey"] + ["tab:green"] * (len(names) - 1))
        right.set_ylim(min(values) - 1.0, max(values) + 1.0)
        right.set(ylabel="PSNR dB vs sharp ground truth", title="Restoration quality (validation images)")
    else:
        right.text(
            0.5,
            0.5,
            f"not measured:\n{q['source']}",
            ha="center",
            va="center",
            wrap=True,
            transform=right.transAxes,
        )
        right.set_axis_off()
    for ax in (left, right):
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
