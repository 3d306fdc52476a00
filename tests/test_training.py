"""Trainer: config checks, losses, an end-to-end tiny run, exact resume after SIGKILL,
SIGTERM or SIGINT, DDP."""

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from common.signals import Interrupted, PendingSignal
from training.archs import DefocusDeblurNet
from training.average import main as average_main
from training.checkpoint import CheckpointError, init_from, load_checkpoint, save_checkpoint
from training.config import ConfigError, from_dict, load_config
from training.data import build_validation_set, corpus
from training.losses import LAMBDA_DF, LAMBDA_DME, LAMBDA_WD, STAGES, stage_loss, weighted_l2
from training.metrics import psnr
from training.presets import MAP_MAX, get_config
from training.set_gate import main as set_gate_main
from training.train import Trainer
from training.train import main as train_main
from training.validate import evaluate

ROOT = Path(__file__).resolve().parents[1]

TINY = """
[model]
preset = "small"
[data]
source = "builtin"
crop = 32
workers = 0
val_size = 32
[train]
batch = 2
lr = 1e-3
lr_min = 1e-4
warmup_steps = 2
seed = 3
val_every = 100
ckpt_every = 3
ema_decay = 0.9
[[stage]]
kind = "gt_map"
steps = 4
[[stage]]
kind = "joint"
steps = 3
[[stage]]
kind = "finetune"
steps = 3
"""


def _train(config: Path, out: Path, *extra, env=None, **kw) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "training.train",
        "--config",
        str(config),
        "--out",
        str(out),
        "--device",
        "cpu",
        *extra,
    ]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or {**os.environ, "OMP_NUM_THREADS": "1"},
        **kw,
    )


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def _final_weights(out: Path) -> dict:
    latest = (out / "checkpoints" / "latest").read_text().strip()
    return load_file(str(out / "checkpoints" / latest / "model.safetensors"))


# --- config -----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, message",
    [
        ({}, "no [[stage]] tables"),
        ({"stage": [{"kind": "warp", "steps": 3}]}, "stage kind 'warp' is not one of"),
        ({"stage": [{"kind": "joint", "steps": 0}]}, "has 0 steps"),
        (
            {"train": {"bacth": 3}, "stage": [{"kind": "joint", "steps": 1}]},
            "[train] has unknown keys: bacth",
        ),
        ({"optim": {}, "stage": [{"kind": "joint", "steps": 1}]}, "unknown sections: optim"),
        (
            {"model": {"preset": "huge"}, "stage": [{"kind": "joint", "steps": 1}]},
            "[model] preset 'huge' is not one of paper, small",
        ),
        (
            {"model": {"variant": "sft2"}, "stage": [{"kind": "joint", "steps": 1}]},
            "[model] variant 'sft2' is not one of concat, sft, sft_dec, sft_fdec",
        ),
        (
            {"train": {"turn_consistency": -1}, "stage": [{"kind": "joint", "steps": 1}]},
            "turn_consistency -1 must be >= 0",
        ),
    ],
)
def test_config_errors(raw, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        from_dict(raw)


def test_unknown_preset_is_one_line(tmp_path, capsys):
    config = tmp_path / "huge.toml"
    config.write_text(TINY.replace('preset = "small"', 'preset = "huge"'))
    assert train_main(["--config", str(config), "--out", str(tmp_path / "run"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines() == ["error: [model] preset 'huge' is not one of paper, small"]
    assert not (tmp_path / "run").exists()


def test_stage_schedule_and_rescale():
    config = from_dict(
        {
            "stage": [
                {"kind": "gt_map", "steps": 40},
                {"kind": "joint", "steps": 30},
                {"kind": "finetune", "steps": 30},
            ]
        }
    )
    assert [config.stage_at(s) for s in (0, 39, 40, 69, 70, 99)] == [
        "gt_map",
        "gt_map",
        "joint",
        "joint",
        "finetune",
        "finetune",
    ]
    config.rescale(10)
    assert [s.steps for s in config.stages] == [4, 3, 3]


def test_shipped_configs_load():
    for path in (ROOT / "configs").glob("*.toml"):
        assert load_config(path).total_steps > 0


# --- losses -----------------------------------------------------------------


def test_weighted_l2_matches_numpy_reference():
    rng = np.random.default_rng(0)
    out, gt = rng.random((2, 3, 5, 7)), rng.random((2, 3, 5, 7))
    dmap = rng.random((2, 1, 5, 7))
    norm = np.sqrt(((out - gt) ** 2).sum(axis=1, keepdims=True))
    expected = np.mean(dmap / dmap.mean(axis=(1, 2, 3), keepdims=True) * norm)
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    got = weighted_l2(t(out), t(gt), t(dmap), torch.tensor([True, True]))
    assert float(got) == pytest.approx(expected, rel=1e-9)


def test_weighted_l2_without_map_or_all_in_focus_is_unweighted():
    out, gt = torch.rand(2, 3, 4, 4, dtype=torch.float64), torch.rand(2, 3, 4, 4, dtype=torch.float64)
    dmap = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    dmap[1] = 0.7
    plain = torch.sqrt(((out - gt) ** 2).sum(1)).mean()
    got = weighted_l2(out, gt, dmap, torch.tensor([True, False]))
    assert float(got) == pytest.approx(float(plain), rel=1e-6)


def test_stage_losses_use_the_paper_weights():
    sharp, dmap = torch.zeros(1, 3, 4, 4), torch.full((1, 1, 4, 4), 0.5)
    batch = {"sharp": sharp, "defocus_map": dmap, "has_map": torch.tensor([True])}
    out, est = torch.full((1, 3, 4, 4), 0.1), torch.full((1, 1, 4, 4), 0.2)
    joint = stage_loss("joint", out, est, batch)
    assert float(joint["total"]) == pytest.approx(LAMBDA_DME * 0.3 + LAMBDA_DF * 0.1)
    fine = stage_loss("finetune", out, est, batch)
    per_pixel = np.sqrt(3 * 0.1**2)
    assert float(fine["total"]) == pytest.approx(LAMBDA_DF * 0.1 + LAMBDA_WD * per_pixel, rel=1e-5)
    no_map = {**batch, "has_map": torch.tensor([False])}
    assert float(stage_loss("gt_map", out, est, no_map)["l_dme"]) == 0


def test_every_stage_kind_has_a_forward_call():
    from training.train import _CALLS

    assert set(_CALLS) == set(STAGES)


def test_dme_stage_trains_the_map_alone():
    batch = {
        "sharp": torch.zeros(2, 3, 4, 4),
        "defocus_map": torch.full((2, 1, 4, 4), 0.5),
        "has_map": torch.tensor([True, False]),
    }
    est = torch.full((2, 1, 4, 4), 0.2)
    est[1] = 9.0  # the sample without a map must not count
    losses = stage_loss("dme", None, est, batch)
    assert set(losses) == {"total", "l_dme"}
    assert float(losses["total"]) == pytest.approx(0.3)


def test_radius_weight_moves_the_optimum_towards_large_blur():
    # One pixel, two equally likely truths: the unweighted L1 is flat between them,
    # the weighted one is smallest at the larger.
    gt = torch.tensor([0.2, 0.8]).view(2, 1, 1, 1)
    batch = {"sharp": torch.zeros(2, 3, 1, 1), "defocus_map": gt, "has_map": torch.tensor([True, True])}

    def loss(value, weight):
        est = torch.full((2, 1, 1, 1), value)
        return float(stage_loss("dme", None, est, batch, radius_weight=weight)["total"])

    assert loss(0.3, 0.0) == pytest.approx(loss(0.7, 0.0))
    assert loss(0.8, 2.0) < loss(0.5, 2.0) < loss(0.2, 2.0)


def test_a_negative_radius_weight_is_refused():
    with pytest.raises(ConfigError, match="radius_weight -1 must be >= 0"):
        from_dict({"train": {"radius_weight": -1}, "stage": [{"kind": "dme", "steps": 1}]})


@pytest.mark.parametrize("quantile", [0.5, 0.65, 0.9])
@pytest.mark.parametrize("radius_weight", [0.0, 0.5, 2.0])
def test_dme_loss_is_the_weighted_pinball_loss(quantile, radius_weight):
    """Each pixel's pinball error weighs 1 + radius_weight x its true blur; at quantile
    0.5 that is the weighted L1. The joint stage's map term is the same loss."""
    gt = torch.rand(3, 1, 5, 6, dtype=torch.float64)
    est = torch.rand(3, 1, 5, 6, dtype=torch.float64)
    has_map = torch.tensor([True, False, True])
    batch = {"sharp": torch.zeros(3, 3, 5, 6), "defocus_map": gt, "has_map": has_map}
    kept_gt, kept_est = gt[has_map].numpy(), est[has_map].numpy()
    error = kept_gt - kept_est
    pinball = np.where(error >= 0, 2 * quantile * error, 2 * (quantile - 1) * error)
    weight = 1 + radius_weight * kept_gt
    expected = (weight * pinball).sum() / weight.sum()
    got = stage_loss("dme", None, est, batch, radius_weight=radius_weight, quantile=quantile)["total"]
    assert float(got) == pytest.approx(expected, rel=1e-12)
    joint = stage_loss(
        "joint", est.new_zeros(3, 3, 5, 6), est, batch, radius_weight=radius_weight, quantile=quantile
    )
    assert float(joint["l_dme"]) == pytest.approx(expected, rel=1e-12)


def test_map_quantile_one_half_is_the_papers_l1():
    gt, est = torch.rand(2, 1, 7, 5), torch.rand(2, 1, 7, 5)
    batch = {"sharp": torch.zeros(2, 3, 7, 5), "defocus_map": gt, "has_map": torch.tensor([True, True])}
    got = stage_loss("dme", None, est, batch, quantile=0.5)["total"]
    assert float(got) == pytest.approx(float(F.l1_loss(est, gt)), rel=1e-6)


@pytest.mark.parametrize("quantile", [0.2, 0.65, 0.8])
def test_map_quantile_moves_the_optimum_to_that_quantile_of_the_truths(quantile):
    # One pixel, seven equally likely truths (7 q not an integer: one minimum): the best
    # constant estimate is their q-quantile.
    truths = torch.linspace(0.05, 0.95, 7, dtype=torch.float64).view(7, 1, 1, 1)
    batch = {
        "sharp": torch.zeros(7, 3, 1, 1),
        "defocus_map": truths,
        "has_map": torch.ones(7, dtype=torch.bool),
    }
    grid = np.linspace(0, 1, 1001)
    losses = [
        float(stage_loss("dme", None, torch.full_like(truths, v), batch, quantile=quantile)["total"])
        for v in grid
    ]
    best = grid[int(np.argmin(losses))]
    expected = np.quantile(truths.numpy().ravel(), quantile, method="inverted_cdf")
    assert best == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, float("nan")])
def test_a_map_quantile_outside_zero_one_is_refused(bad):
    with pytest.raises(ConfigError, match=f"map_quantile {bad} must be in \\(0, 1\\)"):
        from_dict({"train": {"map_quantile": bad}, "stage": [{"kind": "dme", "steps": 1}]})


# --- validation -------------------------------------------------------------


class MapEcho(torch.nn.Module):
    """A stand-in model: returns its input, plus 0.1 x the map when one is given, and
    estimates an all-in-focus map."""

    def restore(self, image, defocus_map):
        return image + 0.1 * defocus_map

    def forward(self, image, defocus_map=None):
        out = image if defocus_map is None else self.restore(image, defocus_map)
        return out, torch.zeros_like(image[:, :1])


def test_evaluate_against_numpy():
    samples = build_validation_set(seed=0, size=32)
    metrics = evaluate(MapEcho(), samples, torch.device("cpu"))

    blurry = [s["blurry"].numpy().astype(np.float64) for s in samples]
    sharp = [s["sharp"].numpy().astype(np.float64) for s in samples]
    maps = [s["defocus_map"].numpy().astype(np.float64) for s in samples]
    psnr_in = np.mean([psnr(np.clip(b, 0, 1), t) for b, t in zip(blurry, sharp)])
    assert metrics["psnr_in"] == pytest.approx(psnr_in, rel=1e-5)
    assert metrics["psnr_out"] == pytest.approx(psnr_in, rel=1e-5)
    assert metrics["psnr_true_map"] == pytest.approx(
        np.mean([psnr(np.clip(b + 0.1 * m, 0, 1), t) for b, m, t in zip(blurry, maps, sharp)]), rel=1e-5
    )
    assert metrics["psnr_true_map"] < metrics["psnr_out"]  # the echo only adds error
    assert metrics["map_mae"] == pytest.approx(np.mean([np.abs(m).mean() for m in maps]), rel=1e-5)
    assert metrics["images"] == len(samples) == 12
    # Equal counts per level: the overall mean is the mean of the level means.
    assert metrics["psnr_in"] == pytest.approx(
        np.mean([level["psnr_in"] for level in metrics["levels"].values()])
    )
    assert list(metrics["levels"]) == ["2.0", "5.0", "8.0"]


# --- runs -------------------------------------------------------------------


def test_tiny_run_writes_checkpoints_logs_and_best(tiny_config, tmp_path):
    out = tmp_path / "run"
    proc = _train(tiny_config, out)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    assert (out / "checkpoints" / "latest").read_text().startswith("step_00000010")
    for name in (
        "log.csv",
        "val.csv",
        "curves.png",
        "best/model.safetensors",
        "best/config.json",
        "best/metrics.json",
    ):
        assert (out / name).is_file(), name
    assert len(list((out / "checkpoints").glob("step_*"))) == 2
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".tmp-*"))
    # One row per 10 steps (log_every) and at each stage's end; unused terms stay empty.
    log = list(csv.DictReader(open(out / "log.csv")))
    assert [(r["step"], r["stage"]) for r in log] == [("4", "gt_map"), ("7", "joint"), ("10", "finetune")]
    assert all(np.isfinite(float(r["total"])) and float(r["l_df"]) > 0 for r in log)
    assert [bool(r["l_dme"]) for r in log] == [True, True, False]
    assert [bool(r["l_wd"]) for r in log] == [False, False, True]
    # A rerun of a finished run says so, and how to start a new one, and trains nothing.
    again = _train(tiny_config, out)
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr[-2000:]
    assert stdout.splitlines()[-1] == (
        f"{out}: this run is already complete (10 of 10 steps; best "
        f"checkpoint in {out / 'best'}). To train again, remove {out} "
        f"or give another --out."
    )
    assert "train:" not in stderr  # no progress bar
    assert len(list((out / "checkpoints").glob("step_*"))) == 2
    assert len(list(csv.DictReader(open(out / "log.csv")))) == 3


def test_turn_consistency_run_logs_its_term_where_the_map_is_trained(tmp_path):
    config = tmp_path / "turn.toml"
    config.write_text(TINY.replace("seed = 3", "seed = 3\nturn_consistency = 1.0"))
    proc = _train(config, tmp_path / "run")
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    log = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [(r["stage"], bool(r["l_turn"])) for r in log] == [
        ("gt_map", True),
        ("joint", True),
        ("finetune", False),
    ]
    assert all(float(r["l_turn"]) > 0 for r in log[:2])
    # Each process pairs its own crops: an odd batch cannot be split into pairs.
    config.write_text(config.read_text().replace("batch = 2", "batch = 3"))
    line = _one_error_line(_train(config, tmp_path / "odd"))
    assert line == (
        "error: turn_consistency pairs each process's crops with turned copies: "
        "batch 3 must be a multiple of 2 x 1 processes"
    )


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_resume_after_a_signal_reaches_the_same_weights(tiny_config, tmp_path, sig):
    whole = tmp_path / "whole"
    assert _train(tiny_config, whole).wait(timeout=300) == 0
    cut = tmp_path / "cut"
    proc = _train(tiny_config, cut)
    latest = cut / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not latest.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=300)
    assert latest.exists(), "the run ended before its first checkpoint"
    done = latest.read_text()
    assert done != "step_00000010", "stopped too late to test resuming"
    if sig != signal.SIGKILL:
        # The step under way finishes and is saved, whatever the checkpoint interval.
        assert proc.returncode == 128 + sig
        step = int(done.removeprefix("step_"))
        assert stderr.splitlines()[-1] == (
            f"interrupted by {sig.name}, step {step} saved: rerun the same command to resume "
            "from the last checkpoint"
        )
        assert not list(cut.rglob("*.tmp")) and not list(cut.rglob(".tmp-*"))
    resumed = _train(tiny_config, cut)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-2000:]
    # The raw weights, and best/: the moving average, which the trainer state carries.
    pairs = [
        (_final_weights(whole), _final_weights(cut)),
        (
            load_file(str(whole / "best" / "model.safetensors")),
            load_file(str(cut / "best" / "model.safetensors")),
        ),
    ]
    for a, b in pairs:
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_to_the_process_group_still_saves_the_step(tiny_config, tmp_path, sig):
    """Ctrl-C, ``pkill -f`` and service managers signal every process of the group, the
    DataLoader worker too: the trainer still finishes its step, saves it and exits."""
    tiny_config.write_text(tiny_config.read_text().replace("workers = 0", "workers = 1"))
    out = tmp_path / "run"
    proc = _train(tiny_config, out, start_new_session=True)
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not latest.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, sig)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, stderr[-2000:]
    step = int(latest.read_text().removeprefix("step_"))
    assert stderr.splitlines()[-1].startswith(f"interrupted by {sig.name}, step {step} saved")


def test_a_run_with_a_data_worker_finishes_and_exits(tiny_config, tmp_path):
    """The worker is shut down at the end: nothing is left for the interpreter's exit to
    wait on (a worker that ignored SIGTERM once hung a finished run here)."""
    tiny_config.write_text(tiny_config.read_text().replace("workers = 0", "workers = 1"))
    proc = _train(tiny_config, tmp_path / "run")
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


def _random_batch() -> dict:
    """Two seeded 32² crops with maps, as ``make_batches`` yields them."""
    torch.manual_seed(0)
    return {
        "blurry": torch.rand(2, 3, 32, 32),
        "sharp": torch.rand(2, 3, 32, 32),
        "defocus_map": torch.rand(2, 1, 32, 32),
        "has_map": torch.tensor([True, True]),
    }


class _WorkersEndedByTheStop:
    """Batches from a loader whose worker the stop also ended: one batch, then the stop
    arrives while the trainer waits for the next, which PyTorch reports as ``error``."""

    def __init__(self, stop: PendingSignal, signum, error: Exception):
        self.stop, self.signum, self.error, self.given = stop, signum, error, 0

    def __next__(self) -> dict:
        if self.given:
            self.stop.signum = self.signum
            raise self.error
        self.given += 1
        return _random_batch()


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("DataLoader worker (pid(s) 1) exited unexpectedly"),
        # The worker left while handing over a batch's shared memory (seen with SIGINT).
        ConnectionResetError(104, "Connection reset by peer"),
        EOFError(),
    ],
    ids=["worker exited", "handover reset", "handover closed"],
)
@pytest.mark.parametrize("signum", [signal.SIGTERM, None], ids=["stop", "no stop"])
def test_a_loader_error_after_a_stop_ends_at_the_last_step(tmp_path, signum, error):
    """After a stop the workers' error ends the run at the last finished step, saved;
    without one it is a real error and propagates."""
    trainer = Trainer(from_dict(tomllib.loads(TINY)), tmp_path / "run", torch.device("cpu"))
    stop = PendingSignal()
    batches = _WorkersEndedByTheStop(stop, signum, error)
    if signum is None:
        with pytest.raises(type(error)):
            trainer._loop(batches, tqdm(disable=True), None, stop)
        return
    with pytest.raises(Interrupted) as caught:
        trainer._loop(batches, tqdm(disable=True), None, stop)
    assert (caught.value.signum, caught.value.done) == (signum, 1)
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step_00000001"


def test_ema_is_the_moving_average_of_the_raw_weights(tmp_path):
    """After the first step the average is that step's weights; after each later one it is
    decay * average + (1 - decay) * weights. Validation and best/ use the average."""
    config = from_dict(tomllib.loads(TINY))
    trainer = Trainer(config, tmp_path / "run", torch.device("cpu"))
    decay = config.train.ema_decay
    batch = _random_batch()
    expected = None
    for _ in range(3):
        trainer.train_step("joint", batch)
        raw = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        expected = raw if expected is None else {k: decay * expected[k] + (1 - decay) * raw[k] for k in raw}
    averaged = trainer.shipped_model.state_dict()
    assert not torch.equal(averaged["dme.conv_first.weight"], raw["dme.conv_first.weight"])
    for key in expected:
        torch.testing.assert_close(averaged[key], expected[key], rtol=1e-5, atol=1e-7, msg=key)


def test_the_trainer_draws_offsets_per_step_where_the_restorer_reads_the_estimate(tmp_path):
    def trainer(toml: str, name: str) -> Trainer:
        return Trainer(from_dict(tomllib.loads(toml)), tmp_path / name, torch.device("cpu"))

    noisy = TINY.replace("seed = 3", "seed = 3\nguide_noise = 0.05")
    shape = (2, 1, 32, 32)
    first = trainer(noisy, "run")
    offset = first._guide_offset(shape)
    # A resumed run draws the same offsets at the same step.
    torch.testing.assert_close(offset, trainer(noisy, "again")._guide_offset(shape), rtol=0, atol=0)
    first.step = 1
    assert not torch.equal(offset, first._guide_offset(shape))
    assert trainer(TINY, "off")._guide_offset(shape) is None

    seen = []
    first.model.register_forward_hook(
        lambda _m, args, kwargs, _out: seen.append(kwargs["guide_offset"]), with_kwargs=True
    )
    batch = {"blurry": torch.rand(2, 3, 32, 32), "defocus_map": torch.rand(shape)}
    for stage, perturbed in (
        ("joint", True),
        ("finetune", True),
        ("end_to_end", True),
        ("gt_map", False),
        ("dme", False),
    ):
        first._forward(first.net, stage, batch)
        assert (seen[-1] is not None) == perturbed, stage


def test_average_of_a_step_checkpoint(tmp_path, capsys):
    """training.average writes the moving average a step checkpoint's state.pt holds: the
    trainer's shipped (averaged) weights, not the raw ones the folder holds."""
    config = from_dict(tomllib.loads(TINY))
    trainer = Trainer(config, tmp_path / "run", torch.device("cpu"))
    batch = _random_batch()
    for _ in range(3):
        trainer.train_step("joint", batch)
    trainer.files.save(trainer.model, trainer.state())
    step = tmp_path / "run" / "checkpoints" / "step_00000003"
    capsys.readouterr()
    assert average_main([str(step), str(tmp_path / "avg")]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'avg'}: the moving average at step 3\n"
    averaged, saved = load_checkpoint(tmp_path / "avg")
    for key, value in trainer.shipped_model.state_dict().items():
        torch.testing.assert_close(averaged.state_dict()[key], value, msg=key)
    assert not torch.equal(
        averaged.state_dict()["dme.conv_first.weight"], trainer.model.dme.conv_first.weight
    )
    assert saved["training"]["weights"] == "moving average at step 3"
    metrics = json.loads((tmp_path / "avg" / "metrics.json").read_text())
    assert metrics["step"] == 3 and metrics["validation"]["images"] == 12
    assert average_main([str(tmp_path / "avg"), str(tmp_path / "again")]) == 1  # no state.pt
    assert capsys.readouterr().err.startswith(
        f"error: {tmp_path / 'avg' / 'state.pt'}: unreadable trainer state"
    )


def test_checkpoints_record_the_corpus_as_the_run_started(tmp_path, monkeypatch):
    """A `make data` while a run trains must not rewrite what its checkpoints say."""
    config = from_dict(tomllib.loads(TINY))
    config.data.source = "corpus"
    monkeypatch.setattr(corpus, "describe", lambda: {"kept": {"train": 57}})
    trainer = Trainer(config, tmp_path / "run", torch.device("cpu"))
    monkeypatch.setattr(corpus, "describe", lambda: {"kept": {"train": 378}})
    trainer.files.save(trainer.model, trainer.state())
    _, saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000000")
    assert saved["training"]["corpus"] == {"kept": {"train": 57}}


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_ema_decay_out_of_range(decay):
    raw = {"train": {"ema_decay": decay}, "stage": [{"kind": "joint", "steps": 1}]}
    with pytest.raises(ConfigError, match="ema_decay .* must be in"):
        from_dict(raw)


def test_compiled_training_matches_eager(tmp_path):
    """``compile = true`` (what the GPU config uses) trains the same function: its warm-up
    traces both graphs without moving a weight, and the losses follow eager's. In FP32:
    under bf16 autocast (a CPU with bf16) the compiler fuses and rounds otherwise."""
    configs = {}
    for name, extra in (("eager", ""), ("compiled", "compile = true\n")):
        configs[name] = tmp_path / f"{name}.toml"
        configs[name].write_text(TINY.replace("[train]\n", "[train]\namp = false\n" + extra))
    runs = {}
    for name, config in configs.items():
        proc = _train(config, tmp_path / name)
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0 and "compile failed" not in stderr, stderr[-2000:]
        runs[name] = list(csv.DictReader(open(tmp_path / name / "log.csv")))
    assert len(runs["eager"]) == len(runs["compiled"]) == 3
    for eager, compiled in zip(runs["eager"], runs["compiled"]):
        for term in ("total", "l_df"):
            assert float(compiled[term]) == pytest.approx(float(eager[term]), rel=1e-4)
    a, b = _final_weights(tmp_path / "eager"), _final_weights(tmp_path / "compiled")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-5, msg=key)


def test_two_process_ddp_with_gloo(tmp_path):
    """Including the estimator's own stage, which leaves most parameters without gradients."""
    tiny_config = tmp_path / "dme_first.toml"
    tiny_config.write_text(TINY.replace('kind = "gt_map"\nsteps = 4', 'kind = "dme"\nsteps = 4'))
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "training.train",
        "--config",
        str(tiny_config),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "checkpoints" / "latest").read_text().startswith("step_00000010")


def test_dme_stage_moves_only_the_estimator(tmp_path):
    config = tmp_path / "dme.toml"
    config.write_text(TINY.split("[[stage]]")[0] + '[[stage]]\nkind = "dme"\nsteps = 3\n')
    init = tmp_path / "init"
    save_checkpoint(init, DefocusDeblurNet(get_config("small")))
    proc = _train(config, tmp_path / "run", "--init", str(init))
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    before, after = load_file(str(init / "model.safetensors")), _final_weights(tmp_path / "run")
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("dme.") for k in moved)
    log = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [(r["stage"], bool(r["l_dme"]), bool(r["l_df"])) for r in log] == [("dme", True, False)]
    # The --init weights are validated first, so best/ is never worse than the start.
    val = list(csv.DictReader(open(tmp_path / "run" / "val.csv")))
    assert [r["step"] for r in val] == ["0", "3"]
    best = json.loads((tmp_path / "run" / "best" / "metrics.json").read_text())
    assert best["validation"]["psnr_out"] == max(float(r["psnr_out"]) for r in val)


@pytest.mark.parametrize(
    "plain,dilated,full,width,grew",
    [
        (6, 0, 16, 24, ["3 residual blocks"]),
        (3, 0, 16, 24, ["6 residual blocks"]),
        (6, 1, 16, 24, ["2 residual blocks"]),
        (6, 3, 0, 24, ["the full-resolution stage"]),
        (6, 1, 0, 24, ["2 residual blocks", "the full-resolution stage"]),
        (6, 3, 16, 16, ["channels 16 -> 24"]),
        (6, 1, 0, 20, ["2 residual blocks", "the full-resolution stage", "channels 20 -> 24"]),
        (6, 3, 8, 24, ["full-resolution channels 8 -> 16"]),
        (6, 2, 12, 20, ["1 residual blocks", "full-resolution channels 12 -> 16", "channels 20 -> 24"]),
    ],
)
def test_init_from_a_smaller_estimator_grows_it(tmp_path, plain, dilated, full, width, grew):
    """The default model gains DME blocks this way, plain then dilated, its
    full-resolution stage or that stage's width, and width: its first step starts
    from exactly the checkpoint's function."""
    config = get_config("small")
    torch.manual_seed(0)
    small = DefocusDeblurNet(
        dataclasses.replace(
            config, dme_blocks=plain, dme_dilated_blocks=dilated, dme_full_channels=full, dme_channels=width
        )
    )
    save_checkpoint(tmp_path / "small", small)
    grown = DefocusDeblurNet(config)
    assert init_from(grown, tmp_path / "small", "small") == grew
    image = torch.rand(1, 3, 64, 48)
    with torch.no_grad():
        for got, want in zip(grown.eval()(image), small.eval()(image)):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_init_from_sets_the_focus_gate(tmp_path):
    """The gate has no weights: a checkpoint without one starts a gated model with its
    weights, and the gated model passes the input through where its map is in focus."""
    config = get_config("small")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "plain", DefocusDeblurNet(config))
    gated = DefocusDeblurNet(dataclasses.replace(config, gate_low=0.02, gate_high=0.06))
    assert init_from(gated, tmp_path / "plain", "small") == ["focus gate 0.02-0.06"]
    plain, _ = load_checkpoint(tmp_path / "plain")
    for key, value in plain.state_dict().items():
        assert torch.equal(gated.state_dict()[key], value), key
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(gated.eval().restore(image, torch.zeros(1, 1, 32, 32)), image)


def test_a_gate_in_the_config_reaches_the_network_and_a_bad_one_is_one_line():
    model = from_dict(
        {"model": {"gate_low": 0.02, "gate_high": 0.06}, "stage": [{"kind": "joint", "steps": 1}]}
    )
    assert (model.model.net_config().gate_low, model.model.net_config().gate_high) == (0.02, 0.06)
    with pytest.raises(
        ConfigError, match=r"^\[model\] focus gate 0.06-0.02 must satisfy 0 <= low < high <= 1$"
    ):
        from_dict({"model": {"gate_low": 0.06, "gate_high": 0.02}, "stage": [{"kind": "joint", "steps": 1}]})


def test_a_widened_estimator_trains_its_new_channels(tmp_path):
    """The zeroed weights (old channels reading new ones) get a gradient at once:
    the new channels carry the fresh init's activations, not zeros."""
    config = get_config("small")
    save_checkpoint(tmp_path / "narrow", DefocusDeblurNet(dataclasses.replace(config, dme_channels=16)))
    grown = DefocusDeblurNet(config)
    init_from(grown, tmp_path / "narrow", "small")
    zeroed = grown.dme.conv_last.weight
    assert torch.count_nonzero(zeroed[:, 16:]) == 0
    estimate = grown.dme(torch.rand(1, 3, 32, 32))
    (estimate - 0.5).abs().mean().backward()
    assert torch.count_nonzero(zeroed.grad[:, 16:]) > 0


@pytest.mark.parametrize(
    "change",
    [
        dict(dme_blocks=1),
        dict(channels=16),
        dict(variant="sft"),
        dict(dme_blocks=3, dme_dilated_blocks=1),
        dict(dme_dilated_blocks=0),
        dict(dme_full_channels=8),
        dict(dme_full_channels=0),
        dict(dme_channels=16),
    ],
)
def test_init_from_refuses_another_network(tmp_path, change):
    """Fewer blocks only, and only at the end: a plain block after a dilated one would
    take the place of a trained dilated block. A trained full-resolution stage is
    neither narrowed nor dropped, and the estimator never narrows."""
    config = get_config("small")
    save_checkpoint(
        tmp_path / "ckpt", DefocusDeblurNet(dataclasses.replace(config, dme_blocks=2, dme_dilated_blocks=1))
    )
    other = DefocusDeblurNet(dataclasses.replace(config, **change))
    with pytest.raises(
        CheckpointError, match="does not fit .* only DME blocks, DME channels and full-resolution channels"
    ):
        init_from(other, tmp_path / "ckpt", "small")


# --- bad input ----------------------------------------------------------------


def _one_error_line(proc) -> str:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_missing_config(tmp_path):
    assert "no such config file" in _one_error_line(_train(tmp_path / "nope.toml", tmp_path / "o"))


def test_missing_data_folder(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(TINY.replace('source = "builtin"', f'source = "{tmp_path / "none"}"'))
    line = _one_error_line(_train(path, tmp_path / "o"))
    assert str(tmp_path / "none") in line


def test_corrupt_checkpoint_is_refused_and_kept(tiny_config, tmp_path):
    out = tmp_path / "run"
    assert _train(tiny_config, out).wait(timeout=300) == 0
    latest = out / "checkpoints" / (out / "checkpoints" / "latest").read_text()
    (latest / "model.safetensors").write_bytes(b"\0garbage")
    line = _one_error_line(_train(tiny_config, out))
    assert "unreadable weights" in line
    assert (latest / "model.safetensors").read_bytes() == b"\0garbage"


@pytest.mark.parametrize(
    "old, new, conflict",
    [
        ("lr = 1e-3", "lr = 5e-4", "train.lr = 0.0005 (the run has 0.001)"),
        ("ema_decay = 0.9", "ema_decay = 0.0", "train.ema_decay = 0.0 (the run has 0.9)"),
        ("crop = 32", "crop = 48", "data.crop = 48 (the run has 32)"),
        ("seed = 3", "seed = 3\nturn_consistency = 0.5", "train.turn_consistency = 0.5 (the run has 0.0)"),
        ("seed = 3", "seed = 3\nmap_quantile = 0.65", "train.map_quantile = 0.65 (the run has 0.5)"),
        (
            'preset = "small"',
            'preset = "small"\ngate_low = 0.01\ngate_high = 0.04',
            "model.gate_low = 0.01 (the run has 0.0)",
        ),
        ("val_every = 100", "val_every = 5", None),
    ],
)
def test_resume_refuses_changed_settings(tmp_path, old, new, conflict):
    first, changed = tmp_path / "first.toml", tmp_path / "changed.toml"
    first.write_text(TINY.replace("steps = 3\n", "steps = 1\n"))
    changed.write_text(first.read_text().replace(old, new))
    out = tmp_path / "run"
    assert _train(first, out).wait(timeout=300) == 0
    before = _final_weights(out)
    if conflict is None:
        assert _train(changed, out).wait(timeout=300) == 0
    else:
        assert conflict in _one_error_line(_train(changed, out))
    assert (out / "checkpoints" / "latest").read_text() == "step_00000006"
    for key, value in _final_weights(out).items():
        assert torch.equal(value, before[key]), key


def test_checkpoint_of_another_preset_is_refused(tiny_config, tmp_path):
    out = tmp_path / "run"
    assert _train(tiny_config, out).wait(timeout=300) == 0
    paper = tmp_path / "paper.toml"
    paper.write_text(TINY.replace('preset = "small"', 'preset = "paper"'))
    assert "checkpoint is preset 'small', expected 'paper'" in _one_error_line(_train(paper, out))


def test_set_gate_changes_the_gate_and_nothing_else(tmp_path, capsys):
    """training.set_gate: the same weights with the new gate, and metrics.json with the
    source's step and the built-in validation of the gated net; --off removes it."""
    config = from_dict(tomllib.loads(TINY))
    trainer = Trainer(config, tmp_path / "run", torch.device("cpu"))
    trainer.train_step("joint", _random_batch())
    trainer.files.save(trainer.model, trainer.state())
    step = tmp_path / "run" / "checkpoints" / "step_00000001"
    capsys.readouterr()
    assert set_gate_main([str(step), str(tmp_path / "gated"), "--low", "0.02", "--high", "0.06"]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'gated'}: focus gate 0.02-0.06\n"
    gated, saved = load_checkpoint(tmp_path / "gated")
    assert (gated.config.gate_low, gated.config.gate_high) == (0.02, 0.06)
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(gated.state_dict()[key], value), key
    metrics = json.loads((tmp_path / "gated" / "metrics.json").read_text())
    assert metrics["step"] == 1 and metrics["weights"].endswith("focus gate 0.02-0.06 (training.set_gate)")
    assert metrics["validation"] == evaluate(
        gated, build_validation_set(seed=0, size=256), torch.device("cpu")
    )
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(gated.restore(image, torch.zeros(1, 1, 32, 32)), image)
    assert set_gate_main([str(tmp_path / "gated"), str(tmp_path / "plain"), "--off"]) == 0
    plain, _ = load_checkpoint(tmp_path / "plain")
    assert (plain.config.gate_low, plain.config.gate_high) == (0.0, 0.0)


@pytest.mark.parametrize("offset", [0.03, -0.02])
def test_set_gate_shifts_the_map_inside_the_clamp(tmp_path, capsys, offset):
    """--map-offset: the estimate moves by the offset wherever it stays inside [0, MAP_MAX],
    clamps where it would leave it, keeps the source's gate, and nothing else changes."""
    torch.manual_seed(0)
    source = DefocusDeblurNet(dataclasses.replace(get_config("small"), gate_low=0.01, gate_high=0.04))
    with torch.no_grad():
        source.dme.conv_last.bias.fill_(0.5)  # an untrained estimate near the range's middle
    save_checkpoint(tmp_path / "ckpt", source)
    assert set_gate_main([str(tmp_path / "ckpt"), str(tmp_path / "out"), "--map-offset", str(offset)]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'out'}: focus gate 0.01-0.04, map {offset:+g}\n"
    shifted, _ = load_checkpoint(tmp_path / "out")
    assert (shifted.config.gate_low, shifted.config.gate_high) == (0.01, 0.04)
    image = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before, after = source.eval().estimate(image), shifted.estimate(image)
    inside = (before > 0) & (before < MAP_MAX) & (before + offset > 0) & (before + offset < MAP_MAX)
    assert inside.float().mean() > 0.9
    torch.testing.assert_close(after[inside], before[inside] + offset, rtol=0, atol=1e-5)
    assert after.min() >= 0 and after.max() <= MAP_MAX
    different = {k for k, v in source.state_dict().items() if not torch.equal(shifted.state_dict()[k], v)}
    assert different == {"dme.conv_last.bias"}


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--low", "0.06", "--high", "0.02"],
            "error: focus gate 0.06-0.02 must satisfy 0 <= low < high <= 1",
        ),
        (["--map-offset", "nan"], "error: map offset nan must lie in [-1, 1]"),
        (["--map-offset", "2"], "error: map offset 2 must lie in [-1, 1]"),
        (["--low", "0.01", "--high", "0.04"], "missing: no such checkpoint"),
    ],
)
def test_set_gate_refuses_in_one_line(tmp_path, capsys, args, message):
    source = tmp_path / ("missing" if "--low" in args and "0.01" in args else "ckpt")
    if source.name == "ckpt":
        save_checkpoint(source, DefocusDeblurNet(get_config("small")))
    assert set_gate_main([str(source), str(tmp_path / "out"), *args]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "out").exists()
