"""bf16 training on a CPU: the dilated convolutions computed in NCHW (oneDNN's
channels_last bf16 weight gradients are wrong for them), the trainer's layout, and
``benchmarks.train_speed``."""

import json
import tomllib
from pathlib import Path

import pytest
import torch
from torch import nn

from training import amp
from training.archs.blocks import ResBlock, conv3x3
from training.config import from_dict
from training.train import Trainer

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "default"
NATIVE_BF16 = amp.cpu_has_bf16(amp.cpu_flags())
needs_native_bf16 = pytest.mark.skipif(
    not NATIVE_BF16, reason=f"this CPU has none of {', '.join(amp.BF16_CPU_FLAGS)}: bf16 would be emulated"
)

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
seed = 3
[[stage]]
kind = "joint"
steps = 2
"""


def _net(dilation: int) -> nn.Sequential:
    """A conv, a plain and a dilated residual block, a conv: (N, 8, H, W) -> (N, 1, H, W)."""
    torch.manual_seed(0)
    return nn.Sequential(conv3x3(8, 24), ResBlock(24), ResBlock(24, dilation), conv3x3(24, 1))


def _grads(net: nn.Module, x: torch.Tensor, bf16: bool) -> dict:
    """Weight gradients of sum(net(x) * fixed random weights)."""
    net.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = net(x)
    (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return {name: p.grad.clone() for name, p in net.named_parameters() if name.endswith("weight")}


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm())


def _is_channels_last(conv: nn.Conv2d) -> bool:
    return conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()


def test_only_the_dilated_convs_go_nchw():
    net = _net(4).to(memory_format=torch.channels_last)
    assert amp.dilated_convs_to_nchw(net) == 2
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [_is_channels_last(c) for c in convs] == [True, True, True, False, False, True]


@pytest.mark.parametrize("dilation", [2, 8])
def test_nchw_dilated_convs_change_no_value(dilation):
    """In FP32 the mixed layout computes what the plain NCHW net computes (to the order of
    summation: channels_last alone differs from NCHW by as much)."""
    x = torch.rand(2, 8, 32, 32)
    reference = _grads(_net(dilation), x, bf16=False)
    mixed = _net(dilation).to(memory_format=torch.channels_last)
    amp.dilated_convs_to_nchw(mixed)
    got = _grads(mixed, x.to(memory_format=torch.channels_last), bf16=False)
    for name, grad in reference.items():
        assert _relative_error(got[name], grad) < 1e-4, name


@needs_native_bf16
@pytest.mark.parametrize("dilation", [1, 2, 4, 8])
@pytest.mark.parametrize("size", [32, 128])
def test_bf16_gradients_in_the_trainers_layout_match_nchw(dilation, size):
    """channels_last with the dilated convs in NCHW: the weight gradients of the plain
    NCHW net in bf16 (to one bf16 step of rounding), and within bf16's error of FP32's. Plain
    channels_last gave 75% error at dilation 2, NaN or Inf at 4 and 8, and crashed."""
    x = torch.rand(2, 8, size, size)
    fp32 = _grads(_net(dilation), x, bf16=False)
    nchw = _grads(_net(dilation), x, bf16=True)
    net = _net(dilation).to(memory_format=torch.channels_last)
    amp.dilated_convs_to_nchw(net)
    got = _grads(net, x.to(memory_format=torch.channels_last), bf16=True)
    for name in fp32:
        assert _relative_error(got[name], nchw[name]) < 0.01, name
        assert _relative_error(got[name], fp32[name]) < 0.1, name


@pytest.mark.parametrize("flags, dilated_layout", [({"avx512_bf16"}, "nchw"), (set(), "channels_last")])
def test_trainer_keeps_dilated_convs_nchw_only_in_bf16(monkeypatch, tmp_path, flags, dilated_layout):
    monkeypatch.setattr(amp, "cpu_flags", lambda: flags)
    trainer = Trainer(from_dict(tomllib.loads(TINY)), tmp_path / "run", torch.device("cpu"))
    assert trainer.bf16 == bool(flags)
    convs = [m for m in trainer.model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    layouts = {max(c.dilation) > 1: "channels_last" if _is_channels_last(c) else "nchw" for c in convs}
    assert layouts == {False: "channels_last", True: dilated_layout}


def test_train_speed_report(tmp_path):
    """Both precisions time every stage of the config; after paired steps both validate to
    finite figures (bf16 rows only where the CPU has native bf16)."""
    from benchmarks.train_speed import main

    config = tmp_path / "tiny.toml"
    config.write_text(TINY.replace("steps = 2", 'steps = 2\n[[stage]]\nkind = "dme"\nsteps = 2'))
    assert main(["--config", str(config), "--init", str(DEFAULT_MODEL), "--steps", "1",
                 "--quality-steps", "1", "--out", str(tmp_path)]) == 0  # fmt: skip
    result = json.loads((tmp_path / "train_speed.json").read_text())
    precisions = {"fp32", "bf16"} if NATIVE_BF16 else {"fp32"}
    assert set(result["stages"]) == {"joint", "dme"}
    for row in result["stages"].values():
        assert set(row) == precisions
        assert all(
            r["steps"] == 1 and r["steps_per_s"] == pytest.approx(1 / r["median_s"]) for r in row.values()
        )
    quality = result["quality"]
    assert quality["stage"] == "dme" and quality["steps"] == 1
    for name in precisions:
        assert torch.isfinite(torch.tensor([quality[name]["psnr_out"], quality[name]["map_mae"]])).all()
    if NATIVE_BF16:
        assert result["agreement"]["output_psnr_db"] > 40
    text = (tmp_path / "train_speed.md").read_text()
    assert "| stage | FP32 s/step |" in text and "| dme |" in text
