"""Training speed: one optimizer step of each stage in FP32 and in bf16 autocast, the
precisions taking turns on the same batches, and what bf16 costs in quality.
``python -m benchmarks.train_speed`` reports it."""

import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch
from torch.utils.data import Dataset, default_collate
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from training import amp
from training.batches import build_dataset, to_device
from training.config import TrainConfig, load_config
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


def render_batches(dataset: Dataset, size: int, count: int, offset: int = 0) -> List[dict]:
    """``count`` batches of ``size`` items of ``dataset``, from batch number ``offset`` on."""
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


def quality_check(
    trainers: Dict[str, Trainer], config: TrainConfig, dataset: Dataset, steps: int, offset: int
) -> dict:
    """Train each trainer ``steps`` more steps of the last stage on the same batches, then
    validate its weights (FP32) on the built-in renders."""
    stage = config.stages[-1].kind
    for i in tqdm(range(steps), desc=f"quality {stage}", leave=False):
        batch = render_batches(dataset, config.train.batch, 1, offset + i)[0]
        for trainer in trainers.values():
            step(trainer, stage, batch)
    val_set = load_validation_set(config.data)
    result = {"stage": stage, "steps": steps}
    for name, trainer in trainers.items():
        m = evaluate(trainer.model, val_set, torch.device("cpu"))
        result[name] = {k: m[k] for k in ("psnr_in", "psnr_out", "ssim_out", "map_mae", "psnr_true_map")}
    return result


def measure(config_path: Path, init: Path, steps: int, quality_steps: int) -> dict:
    """Step times per stage and precision (``stages``), the forward ``agreement`` and with
    ``quality_steps`` the paired ``quality`` check; bf16 only where the CPU has it natively."""
    config = load_config(config_path)
    kinds = list(dict.fromkeys(s.kind for s in config.stages))
    dataset = build_dataset(config, config.data.crop)
    batches = render_batches(dataset, config.train.batch, 4)
    with tempfile.TemporaryDirectory() as work:
        trainers = make_trainers(config, init, Path(work))
        some = next(iter(trainers.values()))
        result = {
            "batch": config.train.batch,
            "crop": config.data.crop,
            "threads": torch.get_num_threads(),
            "precisions": list(trainers),
            "precision_line": amp.describe(some.device, True, "bf16" in trainers),
        }
        if "bf16" in trainers:
            result["agreement"] = forward_agreement(trainers, batches[0])
        result["stages"] = {kind: time_steps(trainers, kind, batches, steps) for kind in kinds}
        if quality_steps:
            result["quality"] = quality_check(trainers, config, dataset, quality_steps, offset=len(batches))
    return result
