"""Set, change or remove a checkpoint's focus gate, or shift its map, without training.

    python -m training.set_gate CKPT OUT --low 0.01 --high 0.04
    python -m training.set_gate CKPT OUT --off
    python -m training.set_gate CKPT OUT --map-offset 0.03

The gate (``NetConfig.gate_low`` / ``gate_high``, map units) has no weights: it decides
where the deblurring net's residual is used, and in focus it is not. ``OUT`` gets the
same weights with the new gate, and ``metrics.json`` with the source's step and training
time and the built-in validation of the result. ``--off`` gives back a net that also
changes what is in focus (mostly denoising it), for users who want that; export either
with ``make export CKPT=OUT``.

``--map-offset D`` adds D to the estimator's output before its clamp (the bias of its
last conv), inside the graph, so every backend reads the shifted map. The estimator
reads blur under half a pixel as none on photos (``models/default/README.md``): the
gate then leaves that near-focus band as blurry and noisy as it came, and a small offset
lets the deblurring net work there. Without a gate option the source's gate stays.
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from training.archs import DefocusDeblurNet
from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training.presets import MAP_MAX
from training.validate import write_metrics


def set_gate(
    source: Path,
    out: Path,
    low: Optional[float] = None,
    high: Optional[float] = None,
    map_offset: float = 0.0,
) -> DefocusDeblurNet:
    """Write ``source``'s weights to ``out`` with the focus gate ``low``-``high`` (0-0:
    none; None: the source's) and ``map_offset`` added to the estimator's output;
    returns the new model.

    Raises:
        CheckpointError: ``source`` cannot be loaded, the gate is out of range, or the
            offset is not finite or outside [-MAP_MAX, MAP_MAX].
    """
    if not abs(map_offset) <= MAP_MAX:
        raise CheckpointError(f"map offset {map_offset:g} must lie in [-{MAP_MAX:g}, {MAP_MAX:g}]")
    model, config = load_checkpoint(source)
    if low is None or high is None:
        low, high = model.config.gate_low, model.config.gate_high
    try:
        gated = DefocusDeblurNet(dataclasses.replace(model.config, gate_low=low, gate_high=high))
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    gated.load_state_dict(model.state_dict())
    with torch.no_grad():
        gated.dme.conv_last.bias += map_offset
    training = config.get("training", {})
    before = training.get("weights", f"the weights of {source}")
    weights = f"{before}, {describe(gated, map_offset)} (training.set_gate)"
    save_checkpoint(out, gated, {"training": {**training, "weights": weights}})
    metrics = Path(source) / "metrics.json"
    measured = json.loads(metrics.read_text()) if metrics.is_file() else {}
    write_metrics(
        out,
        gated,
        measured.get("step", training.get("step", 0)),
        measured.get("training_seconds", 0.0),
        weights,
    )
    return gated


def describe(model: DefocusDeblurNet, map_offset: float) -> str:
    """What ``set_gate`` made: ``focus gate 0.01-0.04, map +0.02`` (the offset only when set)."""
    return model.config.gate_text + (f", map {map_offset:+g}" if map_offset else "")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.set_gate", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint or bundle folder to read")
    parser.add_argument("out", type=Path, help="checkpoint folder to write")
    gate = parser.add_mutually_exclusive_group()
    gate.add_argument("--low", type=float, help="map value up to which the input passes unchanged")
    gate.add_argument("--off", action="store_true", help="remove the gate")
    parser.add_argument("--high", type=float, help="map value from which the deblurred pixel is used whole")
    parser.add_argument(
        "--map-offset",
        type=float,
        default=0.0,
        help="add this to the estimated map, in map units (default 0)",
    )
    args = parser.parse_args(argv)
    if (args.low is None) != (args.high is None):
        parser.error("--low and --high go together")
    if args.low is None and not args.off and not args.map_offset:
        parser.error("nothing to change: give --low and --high, --off or --map-offset")
    low, high = (0.0, 0.0) if args.off else (args.low, args.high)
    try:
        gated = set_gate(args.checkpoint, args.out, low, high, args.map_offset)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.out}: {describe(gated, args.map_offset)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
