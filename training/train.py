"""Three-stage trainer.

    python -m training.train --config configs/small.toml [--out runs/small] [--device auto]
    torchrun --nproc_per_node 2 -m training.train --config ...   (DistributedDataParallel)

Writes ``OUT/checkpoints/step_*/`` (weights, config, trainer state; the newest is
named in ``OUT/checkpoints/latest``), ``OUT/best/`` (best validation PSNR),
``OUT/log.csv``, ``OUT/val.csv`` and ``OUT/curves.png``. Rerunning the same
command resumes from the last checkpoint; a run killed at any moment resumes
to the same weights as an uninterrupted one (pool mode excepted, see config). On
SIGTERM or SIGINT the step under way finishes and is saved before the exit (143 / 130). A
rerun whose config changes a setting of ``config.RESUME_FIXED`` is refused.
"""

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from common.signals import Interrupted, PendingSignal, as_interrupted, interruptible
from training import amp
from training.archs import DefocusDeblurNet
from training.batches import make_batches
from training.checkpoint import CheckpointError, init_from
from training.config import ConfigError, TrainConfig, load_config, resume_conflict
from training.data import DataError
from training.dihedral import turn_of_step, with_turned_copies
from training.guide_noise import smooth_offsets
from training.losses import stage_loss
from training.run_io import RunFiles
from training.validate import evaluate, load_validation_set

#: How each stage calls the net: restoring from the true map, from the estimate, or
#: estimating only (one compiled graph per call).
_CALLS = {
    "gt_map": "gt_map",
    "joint": "estimate",
    "end_to_end": "estimate",
    "finetune": "estimate",
    "dme": "dme",
}

#: Steps timed to fit ``budget_seconds`` (after the first, slow ones).
PROBE_START, PROBE_END = 10, 60


class Trainer:
    """Owns the model, optimizer, schedule and data of one (possibly distributed) run."""

    def __init__(self, config: TrainConfig, out: Path, device: torch.device, init: Optional[Path] = None):
        self.config = config
        self.out = Path(out)
        self.device = device
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.files = RunFiles(out, config) if self.rank == 0 else None
        tc = config.train
        if tc.turn_consistency > 0 and tc.batch % (2 * self.world):
            raise ConfigError(
                f"turn_consistency pairs each process's crops with turned copies: batch {tc.batch} "
                f"must be a multiple of 2 x {self.world} processes"
            )
        torch.manual_seed(tc.seed)
        self.model = DefocusDeblurNet(config.model.net_config())
        if init is not None:
            grown = init_from(self.model, init, config.model.preset)
            if grown and self.rank == 0:
                tqdm.write(f"{init}: the network changed from the checkpoint: {', '.join(grown)}")
        self.model.to(device)
        self.bf16 = amp.use_bf16(device, tc.amp, amp.cpu_flags())
        if self.rank == 0:
            tqdm.write(amp.describe(device, tc.amp, self.bf16))
        if tc.channels_last:
            self.model.to(memory_format=torch.channels_last)
            if self.bf16 and device.type == "cpu":
                amp.dilated_convs_to_nchw(self.model)
        # One fused kernel instead of a dozen per parameter tensor (198 of them): on a
        # GPU the small net's step is short enough for launches to matter.
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=tc.lr, betas=tc.betas, fused=device.type == "cuda"
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        # Validation and best/ use a moving average of the weights (BasicSR's net_g_ema):
        # at small batches it smooths out the noise of single steps.
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay))
            if tc.ema_decay > 0
            else None
        )
        self.step = 0
        self.best_psnr = -math.inf
        self.elapsed = 0.0
        self.resumed = self._resume(out)
        self.from_init = init is not None and not self.resumed
        self.net = self.model
        if self.world > 1:
            ids = [device.index] if device.type == "cuda" else None
            # The estimator's own stage leaves the rest of the net without gradients.
            unused = any(s.kind == "dme" for s in config.stages)
            self.net = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=unused)

    def lr_factor(self, step: int) -> float:
        """Linear warm-up, then cosine decay from ``lr`` to ``lr_min`` over the run."""
        tc = self.config.train
        if step < tc.warmup_steps:
            return (step + 1) / tc.warmup_steps
        span = max(1, self.config.total_steps - tc.warmup_steps)
        progress = min(1.0, (step - tc.warmup_steps) / span)
        floor = tc.lr_min / tc.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def _resume(self, out: Path) -> bool:
        state = RunFiles.load_latest(out, self.model, self.config.model)
        if state is None:
            return False
        conflict = resume_conflict(state["config"], self.config)
        if conflict:
            raise ConfigError(f"{out}: {conflict}; resume with the run's own settings or give a new --out")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.config.stages = state["stages"]
        self.step = state["step"]
        self.best_psnr = state["best_psnr"]
        self.elapsed = state["elapsed"]
        return True

    def state(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "stages": self.config.stages,
            "step": self.step,
            "best_psnr": self.best_psnr,
            "elapsed": self.elapsed,
        }

    def _compile(self) -> None:
        """``torch.compile`` the network and trace the graphs the stages need (one per
        entry of ``_CALLS``) on zero batches, dropping their gradients: the compile time
        is spent before the budget probe, and no weight moves. Falls back to eager
        where compiling fails."""
        tc, crop = self.config.train, self.config.data.crop
        fmt = torch.channels_last if tc.channels_last else torch.contiguous_format

        def zeros(channels: int) -> torch.Tensor:
            shape = (tc.batch // self.world, channels, crop, crop)
            return torch.zeros(shape, device=self.device).to(memory_format=fmt)

        compiled = torch.compile(self.net, dynamic=False)
        try:
            for stage in {_CALLS[s.kind]: s.kind for s in self.config.stages}.values():
                batch = {"blurry": zeros(3), "defocus_map": zeros(1)}
                deblurred, estimated = self._forward(compiled, stage, batch)
                sum(x.float().mean() for x in (deblurred, estimated) if x is not None).backward()
        except Exception as exc:  # a compiler failure must not cost the run
            tqdm.write(f"torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); training eager")
        else:
            self.net = compiled
        self.optimizer.zero_grad(set_to_none=True)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _forward(self, net, stage: str, batch: dict) -> tuple:
        """(deblurred or None, estimated map) of ``net`` on a batch, as ``stage`` calls it."""
        call = _CALLS[stage]
        offset = self._guide_offset(batch["defocus_map"].shape) if call == "estimate" else None
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            guide = batch["defocus_map"] if call == "gt_map" else None
            deblurred, estimated = net(
                batch["blurry"], guide, estimate_only=call == "dme", guide_offset=offset
            )
        return None if deblurred is None else deblurred.float(), estimated.float()

    def _guide_offset(self, shape: tuple) -> Optional[torch.Tensor]:
        """``guide_noise``'s offsets for this step's crops (None when off), a function of
        the seed, the step and the process: a resumed run draws what it would have."""
        sigma = self.config.train.guide_noise
        if sigma <= 0:
            return None
        generator = torch.Generator().manual_seed(
            (self.config.train.seed * 10**7 + self.step) * 1024 + self.rank
        )
        return smooth_offsets(shape, sigma, generator).to(self.device)

    def train_step(self, stage: str, batch: dict) -> dict:
        """One optimizer step of ``stage``; returns the loss terms, still on the device."""
        self.net.train()
        weight = self.config.train.turn_consistency
        if weight > 0:
            batch = with_turned_copies(batch, turn_of_step(self.step))
        deblurred, estimated = self._forward(self.net, stage, batch)
        train = self.config.train
        losses = stage_loss(
            stage, deblurred, estimated, batch, weight, train.radius_weight, train.map_quantile
        )
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.scheduler.step()
        self.step += 1
        return {k: v.detach() for k, v in losses.items()}

    def _maybe_rescale(self, started: float, probe_started: float) -> None:
        """Fit the stage lengths to ``budget_seconds`` from the probe's speed."""
        budget = self.config.train.budget_seconds
        if budget <= 0 or self.resumed or self.step != PROBE_END:
            return
        self._sync()
        now = time.perf_counter()
        rate = (PROBE_END - PROBE_START) / (now - probe_started)
        # 10% of the budget is kept for validation and checkpoints.
        left = 0.9 * budget - (now - started)
        total = [max(PROBE_END + 1, PROBE_END + int(left * rate))]
        if self.world > 1:
            dist.broadcast_object_list(total, src=0)  # every rank must stop at the same step
        self.config.rescale(total[0])
        if self.files:
            tqdm.write(
                f"budget {budget:.0f}s at {rate:.2f} steps/s -> {self.config.total_steps} steps: "
                + ", ".join(f"{s.kind} {s.steps}" for s in self.config.stages)
            )

    def run(self) -> None:
        if self.resumed and self.step >= self.config.total_steps:
            if self.files is not None:
                tqdm.write(
                    f"{self.out}: this run is already complete ({self.step} of "
                    f"{self.config.total_steps} steps; best checkpoint in {self.out / 'best'}). "
                    f"To train again, remove {self.out} or give another --out."
                )
            return
        val_set = load_validation_set(self.config.data) if self.files else None
        if self.files and self.from_init:
            # The starting weights set the bar: best/ never falls below them.
            self.validate(val_set)
        batches = make_batches(self.config, self.step, self.rank, self.world, self.device)
        bar = tqdm(
            total=self.config.total_steps,
            initial=self.step,
            disable=self.files is None,
            dynamic_ncols=True,
            desc="train",
        )
        try:
            with interruptible(defer=True) as stop:
                self._loop(batches, bar, val_set, stop)
        finally:
            bar.close()
            batches.close()

    def _loop(self, batches, bar: tqdm, val_set: Optional[list], stop: PendingSignal) -> None:
        """Train to the last step. On SIGINT / SIGTERM the step under way finishes, a
        checkpoint is saved, and ``Interrupted`` is raised: a rerun resumes there."""
        tc = self.config.train
        started = tick = probe_started = time.perf_counter()
        if tc.compile:
            self._compile()
        pending: list = []  # loss terms of the steps since the last log row
        saved = self.step
        while self.step < self.config.total_steps and stop.signum is None:
            stage = self.config.stage_at(self.step)
            try:
                batch = next(batches)
            # A stop that reached the data workers too ends the run at the last finished
            # step. PyTorch reports the worker's exit as "DataLoader worker ... exited
            # unexpectedly" (RuntimeError), or, when it left in the middle of handing over
            # a batch's shared memory, as the socket's ConnectionResetError (OSError) or
            # EOFError (multiprocessing.reduction.recvfds).
            except (RuntimeError, OSError, EOFError):
                if stop.signum is None:
                    raise
                break
            losses = self.train_step(stage, batch)
            if self.step == PROBE_START:
                self._sync()
                probe_started = time.perf_counter()
            self._maybe_rescale(started, probe_started)
            now = time.perf_counter()
            self.elapsed, tick = self.elapsed + now - tick, now
            bar.total = self.config.total_steps
            if self.files is None:
                continue
            bar.update(1)
            pending.append(losses)
            last = self.step == self.config.total_steps
            if last or self.step % tc.log_every == 0 or self.config.stage_at(self.step) != stage:
                loss = self._log(stage, pending, bar.format_dict.get("rate"))
                bar.set_postfix(stage=stage, loss=f"{loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.1e}")
                pending = []
            if self.step % tc.val_every == 0 or last:
                self.validate(val_set)
            if self.step % tc.ckpt_every == 0 or last:
                self.files.save(self.model, self.state())
                saved = self.step
        if self.step < self.config.total_steps:  # a signal stopped the loop early
            if self.files and pending:
                self._log(self.config.stage_at(self.step - 1), pending, bar.format_dict.get("rate"))
            if self.files and saved != self.step:
                self.files.save(self.model, self.state())
            stop.raise_if_received(done=self.step)

    def _log(self, stage: str, pending: list, rate: Optional[float]) -> float:
        """Write one log row, each loss term averaged over ``pending`` (a single
        device sync); returns the mean total loss."""
        means = torch.stack([torch.stack(list(p.values())) for p in pending]).float().mean(0)
        stats = dict(zip(pending[0], means.tolist()))
        self.files.log_step(self.step, stage, stats, self.scheduler.get_last_lr()[0], rate)
        return stats["total"]

    @property
    def shipped_model(self) -> DefocusDeblurNet:
        """The weights that are validated and saved as best/: the average where kept."""
        return self.model if self.ema is None else self.ema.module

    def validate(self, val_set: list) -> None:
        metrics = evaluate(self.shipped_model, val_set, self.device)
        improved = metrics["psnr_out"] > self.best_psnr
        if improved:
            self.best_psnr = metrics["psnr_out"]
            self.files.save_best(self.shipped_model, metrics, self.step, self.elapsed)
        self.files.log_validation(self.step, metrics)
        tqdm.write(
            f"step {self.step}: PSNR {metrics['psnr_in']:.2f} -> {metrics['psnr_out']:.2f} dB "
            f"({metrics['psnr_true_map']:.2f} from the true map), "
            f"SSIM {metrics['ssim_in']:.4f} -> {metrics['ssim_out']:.4f}, "
            f"map MAE {metrics['map_mae']:.4f}{' (best)' if improved else ''}"
        )


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda asked for, but PyTorch sees no CUDA device")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init_distributed(device: torch.device) -> None:
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.train", description="Train the defocus deblurring network."
    )
    parser.add_argument("--config", required=True, type=Path, help="TOML config (configs/*.toml)")
    parser.add_argument("--out", type=Path, help="run folder (default runs/<config name>)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--init", type=Path, help="start from this checkpoint's weights")
    parser.add_argument("--budget-seconds", type=float, help="override [train] budget_seconds")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        if args.budget_seconds is not None:
            config.train.budget_seconds = args.budget_seconds
        device = pick_device(args.device)
        init_distributed(device)
        out = args.out or Path("runs") / args.config.stem
        Trainer(config, out, device, args.init).run()
    except (ConfigError, CheckpointError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        stop = as_interrupted(err)
        saved = f", step {stop.done} saved" if isinstance(err, Interrupted) else ""
        print(
            f"interrupted by {stop.name}{saved}: rerun the same command to resume from the last checkpoint",
            file=sys.stderr,
        )
        return stop.exit_code
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
