"""The estimated defocus map stays in the trained range [0, MAP_MAX], in PyTorch and in
the shipped bundle, for any input and any flip or transposition of it; and the
trainer's precision choice (bf16 autocast only where the CPU has bf16)."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from training import amp
from training.archs import DefocusDeblurNet
from training.archs.dme_arch import clamp_map
from training.config import ConfigError, from_dict
from training.presets import MAP_MAX, get_config

BUNDLE = Path(__file__).resolve().parents[1] / "models" / "default"

#: The eight flips and transpositions of an (H, W, C) image.
DIHEDRAL = [
    lambda x, k=k, t=t: np.rot90(x.transpose(1, 0, 2) if t else x, k) for t in (False, True) for k in range(4)
]


def circuit_board(size: int = 192, seed: int = 0) -> np.ndarray:
    """A made-up circuit-board photo: thin bright traces, pads and dots on dark green,
    the sharp, high-contrast, axis-aligned content that drove the old estimate far
    out of range on flipped copies. (H, W, 3) float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    board = np.empty((size, size, 3), np.float32)
    board[:] = (0.05, 0.25, 0.1)
    for _ in range(60):
        y, x = rng.integers(0, size, 2)
        length, width = rng.integers(8, size // 2), rng.integers(1, 3)
        colour = (0.9, 0.8, 0.4) if rng.random() < 0.7 else (1.0, 1.0, 1.0)
        if rng.random() < 0.5:
            board[y : y + width, x : x + length] = colour
        else:
            board[y : y + length, x : x + width] = colour
    for _ in range(80):
        y, x = rng.integers(0, size - 4, 2)
        board[y : y + rng.integers(2, 5), x : x + rng.integers(2, 5)] = rng.random(3)
    return board


def test_clamp_map_values_and_straight_through_gradient():
    x = torch.tensor([-0.5, 0.0, 0.3, 1.0, 4.0], requires_grad=True)
    plain = clamp_map(x)
    torch.testing.assert_close(plain, torch.tensor([0.0, 0.0, 0.3, 1.0, MAP_MAX]))
    plain.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))
    x.grad = None
    through = clamp_map(x, straight_through=True)
    torch.testing.assert_close(through, plain.detach())
    through.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(5))


@pytest.mark.parametrize("training", [False, True])
def test_estimator_output_is_bounded_for_extreme_weights_and_inputs(training):
    torch.manual_seed(0)
    model = DefocusDeblurNet(get_config("small"))
    with torch.no_grad():
        model.dme.conv_last.weight.mul_(300.0)  # drive the raw output far outside [0, 1]
    model.train(training)
    images = [
        torch.rand(2, 3, 32, 48),
        torch.zeros(1, 3, 32, 32),
        torch.ones(1, 3, 32, 32),
        (torch.rand(1, 3, 32, 32) > 0.5).float(),
    ]
    for image in images:
        estimate = model.estimate(image)
        assert estimate.min() >= 0 and estimate.max() <= MAP_MAX
    raw = model.dme.conv_last(
        model.dme.conv_body(
            model.dme.body(model.dme.conv_first(torch.nn.functional.pixel_unshuffle(images[0], 2)))
        )
    )
    assert raw.min() < 0 and raw.max() > MAP_MAX, "the test must push the raw output out of range"


def test_estimator_trains_back_from_below_zero():
    """A pixel whose raw output is below 0 and whose target is above still gets a
    gradient (the plain clamp would give it none)."""
    torch.manual_seed(0)
    model = DefocusDeblurNet(get_config("small")).train()
    with torch.no_grad():
        model.dme.conv_last.bias.fill_(-1.0)
    image = torch.rand(1, 3, 16, 16)
    loss = (model.estimate(image) - 0.5).abs().mean()
    loss.backward()
    assert model.dme.conv_last.bias.grad.abs().sum() > 0


def test_shipped_estimate_graph_ends_in_the_trained_range():
    manifest = __import__("json").loads((BUNDLE / "manifest.json").read_text())
    assert manifest["map_max"] == MAP_MAX
    graph = onnx.load(str(BUNDLE / "estimate.onnx")).graph
    last = next(node for node in graph.node if node.output[0] == graph.output[0].name)
    assert last.op_type == "Clip"


def test_shipped_map_of_every_flip_of_a_circuit_board_is_in_range():
    session = ort.InferenceSession(str(BUNDLE / "estimate.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    board = circuit_board()
    for transform in DIHEDRAL:
        image = np.ascontiguousarray(transform(board).transpose(2, 0, 1))[None]
        (estimate,) = session.run(None, {name: image})
        assert estimate.min() >= 0.0 and estimate.max() <= MAP_MAX


def test_max_radius_beyond_the_trained_range_is_refused():
    stage = [{"kind": "joint", "steps": 1}]
    with pytest.raises(ConfigError, match=r"max_radius_px 12 must be in \(0, 10\]"):
        from_dict({"data": {"max_radius_px": 12.0}, "stage": stage})
    assert from_dict({"data": {"max_radius_px": 10.0}, "stage": stage}).data.max_radius_px == 10.0


# --- precision ----------------------------------------------------------------


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    assert amp.cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert amp.cpu_flags(tmp_path / "missing") == set()


@pytest.mark.parametrize(
    "device, asked, flags, expected",
    [
        ("cpu", True, {"avx512f", "avx512_bf16"}, True),
        ("cpu", True, {"amx_bf16"}, True),
        ("cpu", True, {"avx512f", "avx512_vnni"}, False),  # Cascade Lake: emulated, slower
        ("cpu", True, {"avx2"}, False),
        ("cpu", False, {"avx512_bf16"}, False),
        ("cuda", True, set(), True),
        ("cuda", False, set(), False),
    ],
)
def test_bf16_only_where_the_hardware_has_it(device, asked, flags, expected):
    assert amp.use_bf16(torch.device(device), asked, flags) is expected
    line = amp.describe(torch.device(device), asked, expected)
    assert line.startswith("precision: bf16" if expected else "precision: fp32")


@pytest.mark.parametrize("flags, expected", [({"avx512_bf16"}, torch.bfloat16), ({"avx2"}, torch.float32)])
def test_trainer_steps_in_the_precision_it_chose(monkeypatch, tmp_path, capsys, flags, expected):
    from training.train import Trainer

    monkeypatch.setattr(amp, "cpu_flags", lambda: flags)
    config = from_dict(
        {
            "data": {"crop": 32, "workers": 0, "val_size": 32},
            "train": {"batch": 2},
            "stage": [{"kind": "joint", "steps": 1}],
        }
    )
    trainer = Trainer(config, tmp_path / "run", torch.device("cpu"))
    seen = []
    trainer.model.dme.conv_last.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    batch = {
        "blurry": torch.rand(2, 3, 32, 32),
        "sharp": torch.rand(2, 3, 32, 32),
        "defocus_map": torch.rand(2, 1, 32, 32),
        "has_map": torch.ones(2, dtype=torch.bool),
    }
    losses = trainer.train_step("joint", batch)
    assert seen == [expected] and torch.isfinite(losses["total"])
    assert ("precision: bf16" if expected == torch.bfloat16 else "precision: fp32") in capsys.readouterr().out
