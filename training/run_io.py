"""Files of a training run: checkpoints (atomic), the best model, logs and curves."""

import csv
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

import torch

from common.atomic import atomic_write
from training.checkpoint import CheckpointError, load_checkpoint, load_state, save_checkpoint
from training.data import corpus

KEEP_CHECKPOINTS = 2
LOG_COLUMNS = ["step", "stage", "lr", "steps_per_s", "total", "l_df", "l_dme", "l_wd", "l_turn"]


class RunFiles:
    """Everything a run writes under its folder; only rank 0 owns one."""

    def __init__(self, out: Path, config):
        self.out, self.config = Path(out), config
        self.ckpts = self.out / "checkpoints"
        self.ckpts.mkdir(parents=True, exist_ok=True)
        # Read once, as the run starts: a `make data` during the run must not change
        # what its checkpoints say they were trained on.
        self.corpus = {"corpus": corpus.describe()} if config.data.source == "corpus" else {}

    def _description(self, step: int) -> dict:
        """What a checkpoint records of its training: the step, the config and, for the
        photo corpus, its packages, counts and curation version when the run started."""
        return {"step": step, "config": self.config.to_dict(), **self.corpus}

    def save(self, model, state: dict) -> None:
        """Write a complete checkpoint folder, then point ``latest`` at it.

        The folder is filled under a temporary name and renamed, and ``latest`` is
        replaced atomically, so a kill at any moment leaves the previous checkpoint
        intact and named.
        """
        name = f"step_{state['step']:08d}"
        tmp, final = self.ckpts / f".tmp-{name}", self.ckpts / name
        shutil.rmtree(tmp, ignore_errors=True)
        save_checkpoint(tmp, model, {"training": self._description(state["step"])})
        atomic_write(tmp / "state.pt", lambda path: torch.save(state, path))
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        atomic_write(self.ckpts / "latest", lambda path: Path(path).write_text(name))
        for old in sorted(self.ckpts.glob("step_*"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def load_latest(out: Path, model, model_section) -> Optional[dict]:
        """Load the newest checkpoint of ``out`` into ``model``; its trainer state plus
        ``config`` (the run's ``TrainConfig.to_dict()``), or None."""
        pointer = Path(out) / "checkpoints" / "latest"
        if not pointer.is_file():
            return None
        folder = pointer.parent / pointer.read_text().strip()
        loaded, config = load_checkpoint(folder, model_section.preset)
        if config["net"]["variant"] != model_section.variant:
            raise CheckpointError(
                f"{folder}: checkpoint is variant {config['net']['variant']!r}, "
                f"config asks {model_section.variant!r}"
            )
        model.load_state_dict(loaded.state_dict())
        saved = config.get("training", {}).get("config", {})
        return {**load_state(folder / "state.pt"), "config": saved}

    def save_best(self, model, metrics: dict, step: int, elapsed: float) -> None:
        best = self.out / "best"
        info = {
            "step": step,
            "training_seconds": round(elapsed, 1),
            "command": " ".join(["python", "-m", "training.train"] + sys.argv[1:]),
            "validation": metrics,
        }
        save_checkpoint(best, model, {"training": self._description(step)})
        atomic_write(best / "metrics.json", lambda p: Path(p).write_text(json.dumps(info, indent=2)))

    def log_step(self, step: int, stage: str, losses: dict, lr: float, rate: Optional[float]) -> None:
        """A row of ``log.csv``; a stage leaves the terms it has no use for empty."""
        row = {"step": step, "stage": stage, "lr": lr, "steps_per_s": rate or "", **losses}
        _append_csv(self.out / "log.csv", row, LOG_COLUMNS)

    def log_validation(self, step: int, metrics: dict) -> None:
        _append_csv(
            self.out / "val.csv",
            {"step": step, **{k: v for k, v in metrics.items() if not isinstance(v, dict)}},
        )
        self._plot()

    def _plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        log, val = _read_csv(self.out / "log.csv"), _read_csv(self.out / "val.csv")
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        ax1.plot([int(r["step"]) for r in log], [float(r["total"]) for r in log], lw=0.5)
        ax1.set(xlabel="step", ylabel="training loss", yscale="log", title="loss")
        steps = [int(r["step"]) for r in val]
        ax2.plot(steps, [float(r["psnr_out"]) for r in val], "o-", label="output")
        if val and "psnr_true_map" in val[0]:
            ax2.plot(steps, [float(r["psnr_true_map"]) for r in val], ":", label="output from the true map")
        ax2.plot(steps, [float(r["psnr_in"]) for r in val], "--", label="blurry input")
        ax2.set(xlabel="step", ylabel="PSNR (dB)", title="validation")
        ax2.legend()
        fig.tight_layout()
        atomic_write(self.out / "curves.png", lambda p: fig.savefig(p, format="png", dpi=100))
        plt.close(fig)


def _append_csv(path: Path, row: dict, columns: Optional[list] = None) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns or list(row), restval="")
        if new:
            writer.writeheader()
        writer.writerow(row)


def _read_csv(path: Path) -> list:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
