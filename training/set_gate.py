"""Set, change or remove a checkpoint's focus gate, without training.

    python -m training.set_gate CKPT OUT --low 0.01 --high 0.04
    python -m training.set_gate CKPT OUT --off

The gate (``NetConfig.gate_low`` / ``gate_high``, map units) has no weights: it decides
where the deblurring net's residual is used, and in focus it is not. ``OUT`` gets the
same weights with the new gate, and ``metrics.json`` with the source's step and training
time and the built-in validation of the result. ``--off`` gives back a net that also
changes what is in focus (mostly denoising it), for users who want that; export either
with ``make export CKPT=OUT``.
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from training.archs import DefocusDeblurNet
from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training.validate import write_metrics


def set_gate(source: Path, out: Path, low: float, high: float) -> DefocusDeblurNet:
    """Write ``source``'s weights with the focus gate ``low``-``high`` (0-0: none) to
    ``out``; returns the gated model.

    Raises:
        CheckpointError: ``source`` cannot be loaded, or the gate is out of range.
    """
    model, config = load_checkpoint(source)
    try:
        gated = DefocusDeblurNet(dataclasses.replace(model.config, gate_low=low, gate_high=high))
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    gated.load_state_dict(model.state_dict())
    training = config.get("training", {})
    before = training.get("weights", f"the weights of {source}")
    weights = f"{before}, {gated.config.gate_text} (training.set_gate)"
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.set_gate", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoint or bundle folder to read")
    parser.add_argument("out", type=Path, help="checkpoint folder to write")
    gate = parser.add_mutually_exclusive_group(required=True)
    gate.add_argument("--low", type=float, help="map value up to which the input passes unchanged")
    gate.add_argument("--off", action="store_true", help="remove the gate")
    parser.add_argument("--high", type=float, help="map value from which the deblurred pixel is used whole")
    args = parser.parse_args(argv)
    if not args.off and args.high is None:
        parser.error("--low needs --high")
    low, high = (0.0, 0.0) if args.off else (args.low, args.high)
    try:
        gated = set_gate(args.checkpoint, args.out, low, high)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.out}: {gated.config.gate_text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
