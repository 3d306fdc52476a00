"""Self-ensemble on the held-out photos, through the runtime: does it beat one pass on every photo?

    python -m benchmarks.photo_ensemble [--bundle models/default] [--passes 8] [--corpus data/corpus]
                                        [--noise-free] [--uniform] [--limit N] [--threads N]
                                        [--backend auto] [--out DIR]

Issue 15's targets: ``--self-ensemble 8`` at least as good as one pass on every photo,
and no photo more than 0.1 dB below its blurry input. The photo validation set
(``training.data.photo_validation``, the samples ``training.evaluate --set photos``
scores) is deblurred by the bundle through ``runtime.Deblurrer``, once in one pass and
once averaging ``passes`` flipped / transposed passes. Per blur level: mean PSNR of the
input, of one pass and of the ensemble, the samples the ensemble makes worse than one
pass and the worst such difference, and the samples more than 0.1 dB below their input.
``--noise-free`` renders the set without sensor noise and 8-bit quantisation
(``training.evaluate --clean``'s samples), where mostly sharp windows show any
over-sharpening; ``--uniform`` blurs every pixel by the level's radius (``training.evaluate
--uniform``'s samples: a photo wholly out of focus). Writes ``photo-ensemble.json`` and ``.md``
(``photo-ensemble-uniform``, ``-noise-free``) beside this machine's benchmark report
unless ``--out`` says otherwise.
"""

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from benchmarks.machine import REPO, describe_machine, usable_cpus
from benchmarks.model_source import shown
from benchmarks.side_report import write_side_report
from runtime import DeblurError, Deblurrer
from runtime.ensemble import SIZES
from training.metrics import psnr

#: Issue 15: no photo more than this many dB below its blurry input.
WORSE_MARGIN_DB = 0.1


def load_samples(
    corpus: Path, limit: Optional[int] = None, size: int = 320, noise: bool = True, uniform: bool = False
) -> List[Dict]:
    """``{"name", "level", "blurry", "sharp"}`` (HWC float32 in [0, 1]) of the photo set
    (its first ``limit`` samples; crops of ``size``, the set's default; ``noise``: sensor
    noise and 8-bit quantisation; ``uniform``: one blur radius everywhere)."""
    from training.data.photo_validation import build_photo_validation_set  # renders with torch

    hwc = lambda t: np.ascontiguousarray(t.numpy().transpose(1, 2, 0), dtype=np.float32)  # noqa: E731
    samples = build_photo_validation_set(corpus, size=size, noise=noise, uniform=uniform)[:limit]
    return [
        {"name": s["name"], "level": float(s["level"]), "blurry": hwc(s["blurry"]), "sharp": hwc(s["sharp"])}
        for s in samples
    ]


def score(one: Deblurrer, many: Deblurrer, samples: Sequence[Dict]) -> List[Dict]:
    """Per sample: ``name``, ``level``, ``psnr_in``, ``psnr_one``, ``psnr_ensemble``."""
    rows = []
    for sample in tqdm(samples, desc="photos", unit="img"):
        blurry, sharp = sample["blurry"], sample["sharp"]
        rows.append(
            {
                "name": sample["name"],
                "level": sample["level"],
                "psnr_in": psnr(blurry, sharp),
                "psnr_one": psnr(one.run(blurry)[0], sharp),
                "psnr_ensemble": psnr(many.run(blurry)[0], sharp),
            }
        )
    return rows


def summarise(rows: Sequence[Dict]) -> Dict[str, Dict]:
    """Per level (px) and ``all``: ``images``, mean PSNRs, ``ensemble_below_one`` (samples
    where the ensemble scores under one pass), ``worst_ensemble_minus_one`` (dB) and
    ``one_below_input`` / ``ensemble_below_input`` (more than ``WORSE_MARGIN_DB`` under)."""

    def of(group: Sequence[Dict]) -> Dict:
        diff = [r["psnr_ensemble"] - r["psnr_one"] for r in group]
        return {
            "images": len(group),
            **{k: float(np.mean([r[k] for r in group])) for k in ("psnr_in", "psnr_one", "psnr_ensemble")},
            "ensemble_below_one": sum(d < 0 for d in diff),
            "worst_ensemble_minus_one": float(min(diff)),
            "one_below_input": sum(r["psnr_one"] < r["psnr_in"] - WORSE_MARGIN_DB for r in group),
            "ensemble_below_input": sum(r["psnr_ensemble"] < r["psnr_in"] - WORSE_MARGIN_DB for r in group),
        }

    levels = sorted({r["level"] for r in rows})
    table = {f"{level:g}": of([r for r in rows if r["level"] == level]) for level in levels}
    table["all"] = of(rows)
    return table


def _render_title(result: Dict) -> str:
    """ " (uniform blur, noise-free)" or what of it applies; "" for the set as it is."""
    words = ["uniform blur"] * result["uniform"] + ["noise-free"] * (not result["noise"])
    return f" ({', '.join(words)})" if words else ""


def markdown(result: Dict) -> str:
    """The result as a short Markdown report."""
    machine, passes = result["machine"], result["passes"]
    lines = [
        f"# Self-ensemble x{passes} on the held-out photos{_render_title(result)}",
        "",
        f"Bundle {result['bundle']}, backend {result['backend']}; {result['scenes']} scenes, "
        f"{result['summary']['all']['images']} samples; CPU {machine['cpu']}; commit "
        f"{machine['git_commit']} (`python -m benchmarks.photo_ensemble`).",
        "",
        f"| level px | n | PSNR in | one pass | x{passes} | x{passes} < one pass | "
        f"worst x{passes} - one dB | one pass < in - {WORSE_MARGIN_DB:g} dB | "
        f"x{passes} < in - {WORSE_MARGIN_DB:g} dB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for level, r in result["summary"].items():
        lines.append(
            f"| {level} | {r['images']} | {r['psnr_in']:.2f} | {r['psnr_one']:.2f} | "
            f"{r['psnr_ensemble']:.2f} | "
            f"{r['ensemble_below_one']} | {r['worst_ensemble_minus_one']:+.3f} | {r['one_below_input']} | "
            f"{r['ensemble_below_input']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.photo_ensemble", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--bundle", type=Path, default=REPO / "models" / "default")
    parser.add_argument("--passes", type=int, default=8, choices=SIZES[1:], help="ensemble size (default 8)")
    parser.add_argument("--corpus", type=Path, default=REPO / "data" / "corpus", help="make data's corpus")
    parser.add_argument("--noise-free", action="store_true", help="render without sensor noise")
    parser.add_argument("--uniform", action="store_true", help="one blur radius over each whole sample")
    parser.add_argument("--limit", type=int, help="score only the first N samples")
    parser.add_argument("--threads", type=int, default=usable_cpus())
    parser.add_argument("--backend", default="auto", help="runtime backend (default auto)")
    parser.add_argument("--out", type=Path, help="report folder (default: this machine's report folder)")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be >= 1")
    from training.data import DataError  # the photo set's own error

    options = {"backend": args.backend, "device": "cpu", "threads": args.threads}
    try:
        samples = load_samples(args.corpus, args.limit, noise=not args.noise_free, uniform=args.uniform)
        with (
            Deblurrer(args.bundle, **options) as one,
            Deblurrer(args.bundle, **options, self_ensemble=args.passes) as many,
        ):
            rows = score(one, many, samples)
            backend = one.describe()
    except (DataError, DeblurError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    machine = describe_machine(args.threads)
    result = {
        "bundle": shown(args.bundle),
        "backend": backend,
        "passes": args.passes,
        "noise": not args.noise_free,
        "uniform": args.uniform,
        "scenes": len({r["name"] for r in rows}),
        "machine": machine,
        "summary": summarise(rows),
        "samples": rows,
    }
    name = "photo-ensemble" + "-uniform" * args.uniform + "-noise-free" * args.noise_free
    write_side_report(args.out, name, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
