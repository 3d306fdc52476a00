"""Training speed on this machine: one optimizer step of each stage, FP32 against bf16 autocast.

    python -m benchmarks.train_speed [--config configs/small_continue.toml] [--init models/default]
                                     [--steps 12] [--quality-steps 0] [--out DIR]

Two trainers start from the same weights (``--init``), one with ``[train] amp``
off (FP32) and one with it on (bf16 autocast where the CPU has native bf16,
``training.amp``), and take turns on the same pre-rendered batches, so a load that
comes and goes hits both alike. The figure is the median time of one
``Trainer.train_step`` (forward, loss, backward, Adam, moving average): data
rendering, which the trainer's workers do beside the steps, is left out.

Before any step, one forward pass of each precision on the same batch shows what
bf16 changes in the output. ``--quality-steps N`` then trains both N more steps
of the config's last stage on the same fresh batches and validates their weights
on the built-in validation renders (in FP32): the bf16 run's cost to quality.

Writes ``train_speed.json`` and ``train_speed.md`` beside this machine's benchmark
report unless ``--out`` says otherwise.
"""

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch.utils.data import default_collate
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from benchmarks.machine import describe_machine
from benchmarks.side_report import write_side_report
from training import amp
from training.batches import build_dataset, to_device
from training.checkpoint import CheckpointError
from training.config import ConfigError, TrainConfig, load_config
from training.data.sources import DataError
from training.metrics import psnr
from training.train import Trainer
from training.validate import evaluate, load_validation_set

PRECISIONS = ("fp32", "bf16")


def make_trainers(config: TrainConfig, init: Path, work: Path) -> Dict[str, Trainer]:
    """One trainer per precision from the same ``init`` weights (bf16 only where native)."""
    trainers = {}
    for name in PRECISIONS:
        cfg = copy.deepcopy(config)
        cfg.train.amp = name == "bf16"
        trainer = Trainer(cfg, work / name, torch.device("cpu"), init)
        if trainer.bf16 == (name == "bf16"):
            trainers[name] = trainer
    return trainers


def render_batches(config: TrainConfig, count: int, offset: int = 0) -> List[dict]:
    """``count`` training batches of the config's data, rendered once."""
    dataset = build_dataset(config, config.data.crop)
    size = config.train.batch
    return [default_collate([dataset[(offset + b) * size + i] for i in range(size)]) for b in range(count)]


def step(trainer: Trainer, stage: str, batch: dict) -> None:
    """One training step on ``batch`` in the memory format the trainer chose."""
    trainer.train_step(stage, to_device(batch, trainer.device, trainer.config.train.channels_last))


@torch.no_grad()
def forward_agreement(trainers: Dict[str, Trainer], batch: dict) -> Dict[str, float]:
    """bf16 against FP32, same weights and batch: PSNR of the output, largest map difference."""
    outputs = {}
    for name, trainer in trainers.items():
        trainer.model.eval()
        outputs[name] = trainer._forward(trainer.model, "joint", to_device(batch, trainer.device, False))
    (out32, map32), (out16, map16) = outputs["fp32"], outputs["bf16"]
    return {
        "output_psnr_db": psnr(out16.numpy(), out32.numpy()),
        "map_max_abs_diff": float((map16 - map32).abs().max()),
    }


def time_steps(trainers: Dict[str, Trainer], stage: str, batches: List[dict], steps: int) -> Dict[str, dict]:
    """Median seconds per step of each trainer, the trainers taking turns (one warm-up each)."""
    seconds: Dict[str, List[float]] = {name: [] for name in trainers}
    for i in tqdm(range(steps + 1), desc=f"timing {stage}", leave=False):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            step(trainer, stage, batches[i % len(batches)])
            if i:
                seconds[name].append(time.perf_counter() - start)
    return {
        name: {"median_s": statistics.median(s), "steps_per_s": 1 / statistics.median(s), "steps": len(s)}
        for name, s in seconds.items()
    }


def quality_check(trainers: Dict[str, Trainer], config: TrainConfig, steps: int, offset: int) -> dict:
    """Train each trainer ``steps`` more steps of the last stage on the same batches, then
    validate its weights (FP32) on the built-in renders."""
    stage = config.stages[-1].kind
    for i in tqdm(range(steps), desc=f"quality {stage}", leave=False):
        batch = render_batches(config, 1, offset + i)[0]
        for trainer in trainers.values():
            step(trainer, stage, batch)
    val_set = load_validation_set(config.data)
    result = {"stage": stage, "steps": steps}
    for name, trainer in trainers.items():
        m = evaluate(trainer.model, val_set, torch.device("cpu"))
        result[name] = {k: m[k] for k in ("psnr_in", "psnr_out", "ssim_out", "map_mae", "psnr_true_map")}
    return result


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Training speed: FP32 against bf16 autocast",
        "",
        f"{m['cpu']} ({', '.join(m['cpu_features'])}), torch {m['packages'].get('torch')}, "
        f"{result['threads']} threads; `{result['config']}`, batch {result['batch']} x "
        f"{result['crop']}², from `{result['init']}`. {result['precision_line']}.",
        "",
        "Median seconds of one training step (forward, loss, backward, Adam, moving average; "
        "data rendering excluded), the precisions taking turns on the same batches:",
        "",
        "| stage | FP32 s/step | FP32 steps/s | bf16 s/step | bf16 steps/s | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for stage, row in result["stages"].items():
        fp32, bf16 = row["fp32"], row.get("bf16")
        tail = (
            f"{bf16['median_s']:.3f} | {bf16['steps_per_s']:.2f} | {fp32['median_s'] / bf16['median_s']:.2f}x"
            if bf16
            else "n/a | n/a | n/a"
        )
        lines.append(f"| {stage} | {fp32['median_s']:.3f} | {fp32['steps_per_s']:.2f} | {tail} |")
    agreement = result.get("agreement")
    if agreement:
        lines += [
            "",
            f"Same weights, one batch: the bf16 output against FP32 {agreement['output_psnr_db']:.1f} dB, "
            f"largest map difference {agreement['map_max_abs_diff']:.4f} map units.",
        ]
    quality = result.get("quality")
    if quality:
        lines += [
            "",
            f"After {quality['steps']} more `{quality['stage']}` steps each on the same batches, "
            "validated in FP32 on the built-in renders:",
            "",
            "| precision | PSNR in | PSNR out | SSIM out | map MAE | PSNR from the true map |",
            "|---|---|---|---|---|---|",
        ]
        for name in PRECISIONS:
            if name in quality:
                q = quality[name]
                lines.append(
                    f"| {name} | {q['psnr_in']:.3f} | {q['psnr_out']:.3f} | {q['ssim_out']:.4f} | "
                    f"{q['map_mae']:.4f} | {q['psnr_true_map']:.3f} |"
                )
    return "\n".join(lines) + "\n"


def run(config_path: Path, init: Path, steps: int, quality_steps: int) -> dict:
    config = load_config(config_path)
    kinds = list(dict.fromkeys(s.kind for s in config.stages))
    batches = render_batches(config, 4)
    with tempfile.TemporaryDirectory() as work:
        trainers = make_trainers(config, init, Path(work))
        some = next(iter(trainers.values()))
        result = {
            "config": str(config_path),
            "init": str(init),
            "batch": config.train.batch,
            "crop": config.data.crop,
            "threads": torch.get_num_threads(),
            "machine": describe_machine(torch.get_num_threads()),
            "precision_line": amp.describe(some.device, True, "bf16" in trainers),
        }
        if "bf16" in trainers:
            result["agreement"] = forward_agreement(trainers, batches[0])
        result["stages"] = {kind: time_steps(trainers, kind, batches, steps) for kind in kinds}
        if quality_steps:
            result["quality"] = quality_check(trainers, config, quality_steps, offset=len(batches))
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train_speed", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", type=Path, default=Path("configs/small_continue.toml"))
    parser.add_argument("--init", type=Path, default=Path("models/default"), help="starting checkpoint")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per stage and precision")
    parser.add_argument("--quality-steps", type=int, default=0, help="paired steps before validating both")
    parser.add_argument("--out", type=Path, help="report folder (default: this machine's CPU report)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.quality_steps < 0:
        print("error: --steps must be >= 1 and --quality-steps >= 0", file=sys.stderr)
        return 2
    try:
        result = run(args.config, args.init, args.steps, args.quality_steps)
    except (CheckpointError, ConfigError, DataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_side_report(args.out, "train_speed", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
