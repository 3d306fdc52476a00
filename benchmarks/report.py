"""The report folder: ``results.json`` (raw), ``README.md`` (tables), plots (PNG)."""

import json
from pathlib import Path
from typing import Callable, List, Optional

from benchmarks.analysis import cell_index
from benchmarks.backends import baseline_for
from benchmarks.plots import plot_latency, plot_quality
from common.atomic import atomic_write

RESULTS = "results.json"
README = "README.md"
LATENCY_PNG = "latency.png"
QUALITY_PNG = "quality.png"
MIB = 2**20


def _num(value: Optional[float], fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def _ms(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _x(value: Optional[float]) -> str:
    return "" if value is None else f" ({value:.2f}x)"


def _status(cell: Optional[dict]) -> str:
    if cell is None:
        return "n/a"
    return "skipped" if cell["status"] == "skipped" else "**error**"


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def grid_table(results: dict, fmt: Callable[[dict], str]) -> List[str]:
    """Backend x size table; ``fmt`` renders an ok cell, others show their status."""
    cells = cell_index(results)
    sizes = results["settings"]["sizes"]
    rows = []
    for name in results["backends"]:
        row = [f"`{name}`"]
        for size in sizes:
            cell = cells.get((name, size))
            row.append(fmt(cell) if cell is not None and cell["status"] == "ok" else _status(cell))
        rows.append(row)
    return _table(["backend", *sizes], rows)


def _fidelity(cell: dict) -> str:
    fid = cell.get("fidelity", {})
    if fid.get("reference"):
        return "ref"
    if fid.get("identical"):
        return "identical"
    return _num(fid.get("psnr_db"))


def target_lines(results: dict) -> List[str]:
    rows = []
    for t in results["targets"]:
        unit = t.get("unit", "")
        if t["met"] is None:
            verdict, measured = "not measured", "-"
        else:
            fmt = (
                (lambda v: f"{v:.0%}")
                if unit == "fraction"
                else (lambda v: f"{v:.2f}{unit}" if unit == "x" else f"{v:.0f} {unit}")
            )
            measured = fmt(t["measured"])
            verdict = ("met" if t["met"] else "**missed**") + f" by {fmt(abs(t['margin']))}"
        rows.append([t["description"], t["target"], measured, verdict, t.get("note", "")])
    return _table(["target", "wanted", "measured", "result", "note"], rows)


def detail_lines(results: dict) -> List[str]:
    rows = []
    for c in results["cells"]:
        if c["status"] != "ok":
            continue
        fid = c.get("fidelity", {})
        rows.append(
            [
                f"`{c['backend']}`",
                c.get("precision", "-"),
                c["size"],
                _ms(c["median_ms"]),
                _ms(c["p90_ms"]),
                str(c["runs"]),
                _num(c["megapixels_per_s"], "{:.3g}"),
                _num(c["gflops"]),
                _num(None if c["fraction_of_peak"] is None else 100 * c["fraction_of_peak"]),
                f"{c['peak_rss_bytes'] / MIB:.0f}{_x(c.get('peak_rss_vs_baseline'))}",
                _num(None if c["device_peak_bytes"] is None else c["device_peak_bytes"] / MIB, "{:.0f}"),
                _fidelity(c),
                _num(fid.get("ssim"), "{:.5f}"),
                _ms(c.get("compile_ms")),
            ]
        )
    return _table(
        [
            "backend",
            "precision",
            "size",
            "median ms",
            "p90 ms",
            "runs",
            "MP/s",
            "GFLOP/s",
            "% own-precision peak",
            "peak RSS MiB (x base)",
            "GPU peak MiB",
            "PSNR vs FP32 ref",
            "SSIM vs ref",
            "compile ms",
        ],
        rows,
    )


def quality_lines(results: dict) -> List[str]:
    q = results["quality"]
    if q["input"] is None:
        return [f"Not measured: {q['source']}."]
    rows = [["blurry input", _num(q["input"]["psnr_db"], "{:.2f}"), _num(q["input"]["ssim"], "{:.4f}"), "-"]]
    for name, e in q["backends"].items():
        if e.get("status") == "ok":
            rows.append(
                [
                    f"`{name}`",
                    _num(e["psnr_db"], "{:.2f}"),
                    _num(e["ssim"], "{:.4f}"),
                    _num(e["psnr_gain_db"], "{:+.2f}"),
                ]
            )
        else:
            rows.append([f"`{name}`", "**error**", e.get("error", ""), ""])
    return [f"On {q['source']}.", ""] + _table(["path", "PSNR dB", "SSIM", "gain over input dB"], rows)


def ensemble_note(results: dict) -> List[str]:
    names = [f"`{n}`" for n, b in results["backends"].items() if b.get("self_ensemble", 1) > 1]
    if not names:
        return []
    return [
        f"{', '.join(names)} average passes over flipped and transposed copies of the image "
        "(`--self-ensemble`): they differ from the single pass by design; their gain is in the "
        "restoration quality below.",
        "",
    ]


def problem_lines(results: dict) -> List[str]:
    rows = []
    for name, b in results["backends"].items():
        if b["status"] != "ok":
            rows.append([f"`{name}`", "all", b["status"], b.get("reason") or b.get("error", "")])
    for c in results["cells"]:
        if c["status"] != "ok" and results["backends"][c["backend"]]["status"] == "ok":
            rows.append([f"`{c['backend']}`", c["size"], c["status"], c.get("reason") or c.get("error", "")])
    return _table(["backend", "size", "status", "why"], rows) if rows else ["None."]


def _peak_text(device: str, p: dict) -> str:
    if "error" in p:
        return f"{device}: not measured ({p['error']})"
    unset = ", ".join(f"{k}={v}" for k, v in p.get("blas_env_unset", {}).items())
    text = (
        f"{device}: FP32 {p['fp32_gflops']:.0f} GFLOP/s ({p['library']}, {p['n']}²"
        + (f"; measured with {unset} unset in that process" if unset else "")
        + ")"
    )
    if "fp16_gflops" in p:
        text += f", FP16 {p['fp16_gflops']:.0f}"
    if "bf16_gflops" in p:
        text += f", BF16 {p['bf16_gflops']:.0f} GFLOP/s ({p['bf16_library']})"
    elif device == "cpu":
        text += ", BF16 not measured (no native BF16 on this CPU)"
    return text


def machine_lines(results: dict) -> List[str]:
    m, s = results["machine"], results["settings"]
    peaks = [_peak_text(device, p) for device, p in results["gemm_peak"].items()]
    mem = f"{m['memory_bytes'] / 2**30:.0f} GiB" if m["memory_bytes"] else "?"
    versions = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    caps = m.get("openvino_capabilities")
    return [
        f"- CPU: {m['cpu']}, {m['cpus_usable']} usable CPUs, **{s['threads']} threads** for every "
        f"CPU backend; memory {mem}; GPU: {', '.join(m['gpus']) or 'none'}",
        f"- CPU features detected at run time: {', '.join(m.get('cpu_features', [])) or 'none of note'}"
        f"; OpenVINO's CPU capabilities: {', '.join(caps) if caps else 'OpenVINO not installed'}",
        f"- Measured GEMM peak: {'; '.join(peaks)}",
        f"- {m['os']}, Python {m['python']}; {versions}",
        f"- git commit {m['git_commit']}; created {results['created']}; took {results['elapsed_s']:.0f} s",
        f"- Command: `{results['command']}`",
    ]


def build_markdown(results: dict, slug: str) -> str:
    md = results["model"]
    s = results["settings"]
    bases = ", ".join(f"`{baseline_for(d).name}`" for d in s["devices"])
    rf = md["receptive_field"]
    lines = [
        f"# Deployment benchmark: {slug}",
        "",
        f"**Model:** {md['note']}. Preset `{md['preset']}`, variant `{md['variant']}`, "
        f"{md['params']:,} parameters, {md['macs_per_pixel'] / 1e3:.1f} KMAC per pixel, receptive "
        f"field {rf['total']} px.",
        "",
        f"Latency is end to end (NumPy HxWx3 float32 in, clipped output out): median of up to "
        f"{s['runs']} runs after {s['warmup']} warm-up, each backend in its own process. Ratios are "
        f"to PyTorch eager FP32 on the same device in this run ({bases}); speed-up = its latency / "
        f"the path's. Sizes are WIDTHxHEIGHT; sizes over {s['large_mpix']:g} MP run only the tiled "
        f"runtime, its whole-image twin and the baseline.",
        "",
        "## Targets",
        "",
        *target_lines(results),
        "",
        "## Latency, median ms (speed-up vs PyTorch eager FP32)",
        "",
        *grid_table(results, lambda c: f"{_ms(c['median_ms'])}{_x(c.get('speedup_vs_baseline'))}"),
        "",
        "## Fidelity: PSNR dB of the output vs the PyTorch FP32 output",
        "",
        *ensemble_note(results),
        *grid_table(results, _fidelity),
        "",
        "## Throughput, MP/s (share of the measured GEMM peak of the path's own precision)",
        "",
        *grid_table(
            results,
            lambda c: (
                f"{c['megapixels_per_s']:.3g}"
                + ("" if c["fraction_of_peak"] is None else f" ({c['fraction_of_peak']:.0%})")
            ),
        ),
        "",
        "## Restoration quality vs ground truth",
        "",
        *quality_lines(results),
        "",
        f"![latency]({LATENCY_PNG})",
        "",
        f"![quality]({QUALITY_PNG})",
        "",
        "## All measurements",
        "",
        *detail_lines(results),
        "",
        "## Skipped and failed",
        "",
        *problem_lines(results),
        "",
        "## Machine",
        "",
        *machine_lines(results),
        "",
        "Backends:",
        "",
    ]
    for name, b in results["backends"].items():
        lines.append(f"- `{name}`: {b['label']}" + (f" — {b['description']}" if b.get("description") else ""))
    return "\n".join(lines) + "\n"


def summary_text(results: dict) -> str:
    """The latency grid and the targets, for the terminal."""
    return "\n".join(
        [
            "Latency, median ms (speed-up vs PyTorch eager FP32):",
            *grid_table(results, lambda c: f"{_ms(c['median_ms'])}{_x(c.get('speedup_vs_baseline'))}"),
            "",
            "Fidelity, PSNR dB vs PyTorch FP32:",
            *grid_table(results, _fidelity),
            "",
            "Targets:",
            *target_lines(results),
        ]
    )


def _write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(text)

    atomic_write(path, write)


def write_report(results: dict, out: Path, slug: str) -> str:
    """Write ``results.json``, ``README.md`` and the plots into ``out``; returns the summary.

    Args:
        results: The ``results.json`` content.
        out: Report folder (created).
        slug: Short machine name for the title, e.g. ``cpu-2core-epyc``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / LATENCY_PNG, lambda tmp: plot_latency(results, tmp))
    atomic_write(out / QUALITY_PNG, lambda tmp: plot_quality(results, tmp))
    _write_text(out / RESULTS, json.dumps(results, indent=2, allow_nan=False) + "\n")
    _write_text(out / README, build_markdown(results, slug))
    return summary_text(results)
