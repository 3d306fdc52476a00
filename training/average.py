"""A run's moving average of the weights at a saved step, written as a checkpoint of its own.

    python -m training.average RUN/checkpoints/step_00004500 OUT

The trainer validates the moving average (``ema_decay``) and writes it to ``best/``
only when the built-in validation improves; a step checkpoint holds the raw weights,
and the average in its ``state.pt``. This writes that average as a checkpoint, to
judge it on another validation set (``training.evaluate --set photos``) or export it.
Beside it, ``metrics.json`` as ``best/`` has one: the step, the training time and the
built-in validation.
"""

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from training.checkpoint import CheckpointError, load_checkpoint, load_state, save_checkpoint
from training.validate import write_metrics

#: ``torch.optim.swa_utils.AveragedModel`` keeps the averaged network under this prefix.
_PREFIX = "module."


def write_average(step: Path, out: Path) -> int:
    """Write the moving average saved with step checkpoint ``step`` to ``out``; returns the step.

    Raises:
        CheckpointError: not a step checkpoint, or its run kept no average.
    """
    model, config = load_checkpoint(step)
    state = load_state(Path(step) / "state.pt")
    if not state.get("ema"):
        raise CheckpointError(f"{step}: its run keeps no moving average of the weights (ema_decay = 0)")
    weights = {k[len(_PREFIX) :]: v for k, v in state["ema"].items() if k.startswith(_PREFIX)}
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{step}: its moving average does not fit the network ({first})") from None
    training = {**config.get("training", {}), "weights": f"moving average at step {state['step']}"}
    save_checkpoint(out, model, {"training": training})
    write_metrics(out, model, state["step"], state["elapsed"], training["weights"])
    return int(state["step"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.average", description=__doc__.split("\n")[0])
    parser.add_argument("step", type=Path, help="a step checkpoint: RUN/checkpoints/step_NNNNNNNN")
    parser.add_argument("out", type=Path, help="checkpoint folder to write")
    args = parser.parse_args(argv)
    try:
        step = write_average(args.step, args.out)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.out}: the moving average at step {step}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
