"""The benchmark parent's PyTorch steps, each in its own process: the parent never imports torch.

    python -m benchmarks.prepare standin FOLDER [--preset small] [--seed 0]
    python -m benchmarks.prepare stats CHECKPOINT
    python -m benchmarks.prepare validation FOLDER --count N [--size 256] [--seed 0]

``standin`` saves a seeded randomly initialised checkpoint, ``stats`` prints the model's
parameters, MACs and size multiple (``training.model_info``), ``validation`` renders
held-out images into ``FOLDER/validation.npz`` (``training.data``). Each prints one JSON
line ``{"event": STEP, ...}``; the parent runs a step with ``run_step``.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np

from benchmarks import launch
from benchmarks.machine import usable_cpus

VALIDATION_FILE = "validation.npz"
#: Seconds one step may take (rendering the validation set is the slowest, ~10 s).
STEP_TIMEOUT_S = 600


def standin(folder: Path, preset: str, seed: int) -> dict:
    """Save a randomly initialised ``preset`` model (seeded) as a checkpoint in ``folder``."""
    import torch

    from training.archs import DefocusDeblurNet
    from training.checkpoint import save_checkpoint
    from training.presets import get_config

    torch.manual_seed(seed)
    save_checkpoint(folder, DefocusDeblurNet(get_config(preset)), {"note": "random init, benchmark"})
    return {"checkpoint": str(folder)}


def stats(checkpoint: Path) -> dict:
    """Parameters, MACs per pixel and size multiple of the checkpoint's network."""
    from training.checkpoint import read_config
    from training.model_info import model_stats
    from training.presets import NetConfig

    return {"stats": model_stats(NetConfig.from_dict(read_config(checkpoint)["net"]))}


def validation(folder: Path, count: int, size: int, seed: int) -> dict:
    """Save ``count`` rendered validation images as ``validation.npz`` (blurry, sharp).

    Returns:
        {"path": the file or None, "description": what it holds, or why there is none}.
    """
    try:
        from training.data import build_validation_set
    except ImportError as exc:
        return {"path": None, "description": f"training.data.build_validation_set is not available ({exc})"}
    try:
        items = build_validation_set(seed=seed, size=size)
    except Exception as exc:  # a data problem costs the quality columns, not the run
        why = f"build_validation_set failed: {type(exc).__name__}: {exc}".splitlines()[0]
        return {"path": None, "description": why}
    if not items:
        return {"path": None, "description": "the validation set is empty"}
    # Evenly spread picks keep every scene and blur level represented.
    picks = sorted({round(i) for i in np.linspace(0, len(items) - 1, min(count, len(items)))})
    items = [items[i] for i in picks]
    path = Path(folder) / VALIDATION_FILE
    np.savez(
        path,
        blurry=np.stack([_hwc(i["blurry"]) for i in items]),
        sharp=np.stack([_hwc(i["sharp"]) for i in items]),
    )
    names = ", ".join(f"{i['name']} ({i['level']:g} px)" for i in items)
    return {
        "path": str(path),
        "description": (
            f"{len(items)} rendered held-out images ({size}x{size}, seed {seed}; "
            f"largest blur radius in brackets): {names}"
        ),
    }


def _hwc(image) -> np.ndarray:
    """A (3, H, W) tensor or array -> (H, W, 3) float32 array."""
    return np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(1, 2, 0))


def run_step(step: str, args: List[str], work: Path) -> dict:
    """Run ``python -m benchmarks.prepare STEP ARGS`` and return its JSON line.

    Raises:
        ValueError: The process failed or printed no result (one line, from its stderr).
    """
    lines, error = launch.run_module(
        "benchmarks.prepare", [step, *args], usable_cpus(), STEP_TIMEOUT_S, Path(work) / f"prepare_{step}.err"
    )
    found = [line for line in lines if line.get("event") == step]
    if error or not found:
        raise ValueError(f"benchmarks.prepare {step}: {error or 'printed no result'}")
    return found[-1]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.prepare", description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    one = steps.add_parser("standin", help="save a random-init checkpoint")
    one.add_argument("folder", type=Path)
    one.add_argument("--preset", default="small")
    one.add_argument("--seed", type=int, default=0)
    steps.add_parser("stats", help="the model's figures").add_argument("checkpoint", type=Path)
    val = steps.add_parser("validation", help="render validation.npz")
    val.add_argument("folder", type=Path)
    val.add_argument("--count", type=int, required=True)
    val.add_argument("--size", type=int, default=256)
    val.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.step == "standin":
        result = standin(args.folder, args.preset, args.seed)
    elif args.step == "stats":
        result = stats(args.checkpoint)
    else:
        result = validation(args.folder, args.count, args.size, args.seed)
    print(json.dumps({"event": args.step, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
