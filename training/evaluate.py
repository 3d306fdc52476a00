"""Evaluate a checkpoint on a validation set, per blur level, against issue 15's targets.

    python -m training.evaluate --checkpoint models/default [--set photos|builtin] [--clean] [--uniform]
                                [--scenes N] [--oracle] [--json out.json]

``photos`` is the held-out photo set (``training.data.photo_validation``: packages
training never uses, ``make data`` first); ``builtin`` the 12 renders training
validates on (``build_validation_set``), kept so old and new figures compare.
``--clean`` renders them without sensor noise and 8-bit quantisation: the in-focus
input is then (nearly) the sharp image, so the in-focus PSNR of the output says how
much the model changes what it should leave alone. ``--uniform`` (photos) blurs each
crop by one radius everywhere, the level's, instead of by its synthetic depth.

Per sample (RGB in [0, 1], the map in model units, radius px / 10):

* PSNR / SSIM of the blurry input, of the output from the estimated map and of the
  output from the true map; ``gap`` = true-map PSNR - estimated-map PSNR;
* the map's MAE and bias (mean of estimate - truth), and its MAE per kind of region
  (``training.map_regions``: flat, texture, edge, occlusion boundary; NaN where a
  sample has none), and its bias on the two sides of depth edges (the occlusion band's
  blurrier and sharper layer): a map blurred across the edge is low on the first and
  high on the second;
* in-focus pixels (true radius < 0.5 px): the mean estimated map there, and the PSNR
  there of the input, the output and the output from the true map against the sharp
  image (the last says what the restorer alone changes there);
* ``nyquist_db``: the output's energy at the Nyquist frequency (the spectrum's
  ``kx = W/2`` and ``ky = H/2`` lines, where 2x2 space-to-depth leaves period-2
  artifacts) over the sharp image's, in dB (> 0: more than the sharp image has);
* ``level_shift``: mean of output - sharp in 8-bit levels, signed, averaged over the
  channels, and ``level_shift_max``, the largest channel's absolute shift.

``--scenes N`` adds the same figures per scene (crop window) for the N scenes whose
mean gap is largest: a few pictures can hold much of the set's gap.

``--oracle`` says where the gap lives: per kind of region, ``gap_<region>`` is what
restoring from the true map there, and from the estimate elsewhere, gains over the
estimate alone (dB). A region's map error costs in proportion to what deblurring
changes there, so this ranks the regions differently from their map MAE (one more
restoration per region and sample).
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from common.atomic import atomic_write
from training.checkpoint import CheckpointError, load_checkpoint
from training.data import DataError, build_validation_set
from training.data.photo_validation import build_photo_validation_set
from training.map_regions import REGIONS, SIDE_REGIONS, SIDES, map_error_by_region, region_labels
from training.metrics import psnr, ssim
from training.presets import MAP_RADIUS_SCALE_PX

#: True radius under this (px) counts as in focus.
IN_FOCUS_PX = 0.5
SETS = ("photos", "builtin")


def nyquist_energy(image: np.ndarray) -> float:
    """Power of the grey image's spectrum on its Nyquist lines (``kx = W/2``, ``ky = H/2``),
    per pixel. (H, W, 3) in [0, 1]; an odd side has no Nyquist line and adds nothing."""
    grey = image.mean(axis=2, dtype=np.float64)
    power = np.abs(np.fft.fft2(grey)) ** 2 / grey.size
    height, width = grey.shape
    lines = power[:, width // 2].sum() if width % 2 == 0 else 0.0
    lines += power[height // 2, :].sum() if height % 2 == 0 else 0.0
    if height % 2 == 0 and width % 2 == 0:
        lines -= power[height // 2, width // 2]  # on both lines
    return float(lines / grey.size)


def masked_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """PSNR of (H, W, 3) images over the pixels where ``mask`` (H, W) is True; NaN when none is."""
    if not mask.any():
        return float("nan")
    mse = float(np.mean((a[mask].astype(np.float64) - b[mask].astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def image_metrics(
    blurry: np.ndarray,
    out: np.ndarray,
    out_true: np.ndarray,
    sharp: np.ndarray,
    estimated: np.ndarray,
    true_map: np.ndarray,
) -> Dict[str, float]:
    """All per-sample figures from HWC images in [0, 1] and (H, W) maps in model units."""
    focus = true_map < IN_FOCUS_PX / MAP_RADIUS_SCALE_PX
    error = estimated.astype(np.float64) - true_map
    shift = (out.mean(axis=(0, 1), dtype=np.float64) - sharp.mean(axis=(0, 1), dtype=np.float64)) * 255
    sharp_nyquist = nyquist_energy(sharp)
    metrics = {
        "psnr_in": psnr(blurry, sharp),
        "psnr_out": psnr(out, sharp),
        "psnr_true_map": psnr(out_true, sharp),
        "ssim_in": ssim(blurry, sharp),
        "ssim_out": ssim(out, sharp),
        "ssim_true_map": ssim(out_true, sharp),
        "map_mae": float(np.abs(error).mean()),
        "map_bias": float(error.mean()),
        "in_focus_fraction": float(focus.mean()),
        "in_focus_map": float(estimated[focus].mean()) if focus.any() else float("nan"),
        "in_focus_psnr_in": masked_psnr(blurry, sharp, focus),
        "in_focus_psnr_out": masked_psnr(out, sharp, focus),
        "in_focus_psnr_true_map": masked_psnr(out_true, sharp, focus),
        "nyquist_db": 10.0 * float(np.log10(max(nyquist_energy(out), 1e-20) / max(sharp_nyquist, 1e-20))),
        "level_shift": float(shift.mean()),
        "level_shift_max": float(np.abs(shift).max()),
    }
    regions = map_error_by_region(sharp, true_map, estimated)
    metrics.update({f"map_mae_{r}": regions[r]["mae"] if r in regions else float("nan") for r in REGIONS})
    metrics.update(
        {f"map_bias_{s}": regions[s]["bias"] if s in regions else float("nan") for s in SIDE_REGIONS}
    )
    metrics["gap"] = metrics["psnr_true_map"] - metrics["psnr_out"]
    return metrics


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()


def oracle_gaps(
    model,
    blurry: torch.Tensor,
    estimated: torch.Tensor,
    true_map: torch.Tensor,
    sharp: np.ndarray,
    psnr_out: float,
) -> Dict[str, float]:
    """``gap_<region>`` for each of ``REGIONS``: PSNR restoring from the true map in that
    region and the estimate elsewhere, minus ``psnr_out`` (NaN where the region is absent).

    Args:
        blurry: (1, 3, H, W); estimated, true_map: (1, 1, H, W); sharp: (H, W, 3) in [0, 1].
    """
    labels = torch.as_tensor(region_labels(sharp, true_map[0, 0].cpu().numpy())).to(blurry.device)
    gaps = {}
    for index, region in enumerate(REGIONS):
        inside = labels == index
        if not inside.any():
            gaps[f"gap_{region}"] = float("nan")
            continue
        mixed = torch.where(inside, true_map, estimated)
        gaps[f"gap_{region}"] = psnr(_hwc(model.restore(blurry, mixed)[0]), sharp) - psnr_out
    return gaps


@torch.no_grad()
def evaluate_samples(
    model,
    samples: Sequence[dict],
    device: torch.device = torch.device("cpu"),
    progress: bool = False,
    oracle: bool = False,
) -> List[Dict]:
    """One row per sample: ``name``, ``level`` and ``image_metrics``, with ``oracle`` also
    ``oracle_gaps`` (a tqdm bar with ``progress``)."""
    model.eval()
    rows = []
    for sample in tqdm(samples, desc="evaluating", unit="img", disable=not progress):
        blurry = torch.as_tensor(sample["blurry"])[None].to(device)
        true_map = torch.as_tensor(sample["defocus_map"])
        out, estimated = model(blurry)
        out_true = model.restore(blurry, true_map[None].to(device))
        sharp = _hwc(torch.as_tensor(sample["sharp"]))
        metrics = image_metrics(
            _hwc(blurry[0]),
            _hwc(out[0]),
            _hwc(out_true[0]),
            sharp,
            estimated[0, 0].float().cpu().numpy(),
            true_map[0].numpy(),
        )
        if oracle:
            metrics.update(
                oracle_gaps(model, blurry, estimated, true_map[None].to(device), sharp, metrics["psnr_out"])
            )
        rows.append({"name": sample["name"], "level": float(sample["level"]), **metrics})
    return rows


def _mean_of(group: Sequence[Dict]) -> Dict:
    """Each figure's mean over ``group`` (NaN, e.g. no in-focus pixel, left out), plus
    ``images``, ``worse`` (output PSNR below the input's) and ``worse_0.1dB``."""
    keys = [k for k in group[0] if k not in ("name", "level")]
    means = {
        k: float(np.nanmean([r[k] for r in group])) if any(np.isfinite(r[k]) for r in group) else float("nan")
        for k in keys
    }
    return {
        "images": len(group),
        **means,
        "worse": sum(r["psnr_out"] < r["psnr_in"] for r in group),
        "worse_0.1dB": sum(r["psnr_out"] < r["psnr_in"] - 0.1 for r in group),
    }


def summarise(rows: Sequence[Dict]) -> Dict[str, Dict]:
    """``_mean_of`` per blur level and over all rows."""
    levels = sorted({r["level"] for r in rows})
    table = {f"{level:g}": _mean_of([r for r in rows if r["level"] == level]) for level in levels}
    table["all"] = _mean_of(rows)
    return table


def worst_scenes(rows: Sequence[Dict], count: int) -> Dict[str, Dict]:
    """``_mean_of`` per scene (one crop window, all its levels) for the ``count`` scenes
    with the largest mean gap, largest first: where the estimated map costs most."""
    scenes = {name: _mean_of([r for r in rows if r["name"] == name]) for name in {r["name"] for r in rows}}
    worst = sorted(scenes, key=lambda name: (-scenes[name]["gap"], name))[:count]
    return {name: scenes[name] for name in worst}


COLUMNS = (
    ("images", "n", "d"),
    ("psnr_in", "PSNR in", ".2f"),
    ("psnr_out", "PSNR est", ".2f"),
    ("psnr_true_map", "PSNR true", ".2f"),
    ("gap", "gap", ".2f"),
    ("ssim_out", "SSIM est", ".4f"),
    ("ssim_true_map", "SSIM true", ".4f"),
    ("map_mae", "map MAE", ".4f"),
    ("map_bias", "bias", "+.4f"),
    *((f"map_mae_{r}", f"MAE {r}", ".4f") for r in REGIONS),
    *((f"map_bias_{key}", f"bias occl. {side}", "+.4f") for side, key in zip(SIDES, SIDE_REGIONS)),
    ("worse", "worse", "d"),
    ("worse_0.1dB", "worse>0.1", "d"),
    ("in_focus_map", "focus map", ".4f"),
    ("in_focus_psnr_in", "focus PSNR in", ".2f"),
    ("in_focus_psnr_out", "focus PSNR out", ".2f"),
    ("in_focus_psnr_true_map", "focus PSNR true", ".2f"),
    ("nyquist_db", "Nyquist dB", "+.2f"),
    ("level_shift", "shift", "+.2f"),
    ("level_shift_max", "|shift| max", ".2f"),
)
#: ``--oracle``'s table: the gap, and what the true map in each kind of region recovers of it.
ORACLE_COLUMNS = (("gap", "gap", ".2f"), *((f"gap_{r}", f"gap {r}", "+.2f") for r in REGIONS))


def table(
    summary: Dict[str, Dict], first: str = "level px", columns: Sequence[Tuple[str, str, str]] = COLUMNS
) -> str:
    """The summary as a Markdown table, one row per key (blur level or scene), headed ``first``."""
    lines = [f"| {first} | " + " | ".join(c[1] for c in columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for level, row in summary.items():
        lines.append(f"| {level} | " + " | ".join(format(row[key], fmt) for key, _, fmt in columns) + " |")
    return "\n".join(lines)


def load_set(name: str, corpus_root: Path, noise: bool = True, uniform: bool = False) -> List[dict]:
    """The samples of validation set ``name`` (``SETS``), with or without sensor noise;
    ``uniform`` blur (photos only)."""
    if name == "photos":
        return build_photo_validation_set(corpus_root, noise=noise, uniform=uniform)
    if uniform:
        raise DataError("--uniform renders the photos set only")
    return build_validation_set(seed=0, size=256, noise=noise)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint or bundle folder")
    parser.add_argument("--set", choices=SETS, default="photos", help="validation set (default photos)")
    parser.add_argument("--corpus", type=Path, default=Path("data/corpus"), help="corpus folder (photos set)")
    parser.add_argument("--clean", action="store_true", help="render without sensor noise and quantisation")
    parser.add_argument("--uniform", action="store_true", help="photos: one blur radius everywhere")
    parser.add_argument(
        "--scenes", type=int, default=0, metavar="N", help="also list the N scenes with the largest gap"
    )
    parser.add_argument(
        "--oracle", action="store_true", help="also the gap recovered by the true map in each kind of region"
    )
    parser.add_argument("--json", type=Path, help="write every sample's figures and the summary here")
    args = parser.parse_args(argv)
    try:
        model, _ = load_checkpoint(args.checkpoint)
        start = time.perf_counter()
        samples = load_set(args.set, args.corpus, noise=not args.clean, uniform=args.uniform)
        rendered = time.perf_counter()
        rows = evaluate_samples(model, samples, progress=True, oracle=args.oracle)
    except (CheckpointError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    done = time.perf_counter()
    summary = summarise(rows)
    print(table(summary))
    if args.oracle:
        print("\n" + table(summary, columns=ORACLE_COLUMNS))
    if args.scenes > 0:
        print("\n" + table(worst_scenes(rows, args.scenes), first="scene"))
    name = args.set + "".join(f" ({k})" for k, on in (("clean", args.clean), ("uniform", args.uniform)) if on)
    print(
        f"\n{name}: {len(samples)} samples of {len({r['name'] for r in rows})} scenes; "
        f"rendering {rendered - start:.1f} s, evaluating {done - rendered:.1f} s "
        f"({torch.get_num_threads()} threads)"
    )
    if args.json:
        result = {
            "checkpoint": str(args.checkpoint),
            "set": args.set,
            "noise": not args.clean,
            "uniform": args.uniform,
            "summary": summary,
            "samples": rows,
        }
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
