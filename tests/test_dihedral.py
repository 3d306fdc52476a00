"""Turned copies and the map's turn consistency: ``training.dihedral`` and ``losses.turn_consistency``."""

import pytest
import torch

from training.batches import dihedral_crops, make_batches
from training.config import from_dict
from training.dihedral import TURNS, turn, turn_back, turn_of_step, with_turned_copies
from training.losses import LAMBDA_DF, LAMBDA_DME, dme_loss, stage_loss, turn_consistency

CODES = range(8)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 2, 6, 6, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("code", CODES)
def test_turn_is_dihedral_crops_symmetry_and_turn_back_undoes_it(images, code):
    zeros = torch.zeros(len(images), dtype=torch.long)
    reference = dihedral_crops(
        images, torch.arange(len(images)), zeros, zeros, torch.full_like(zeros, code), 6
    )
    assert torch.equal(turn(images, code), reference)
    assert torch.equal(turn_back(turn(images, code), code), images)


def test_the_seven_turns_are_distinct_and_steps_cycle_through_them():
    square = torch.arange(16.0).view(4, 4)
    assert len({tuple(turn(square, code).flatten().tolist()) for code in CODES}) == 8
    assert [turn_of_step(step) for step in range(8)] == [*TURNS, TURNS[0]]
    assert 0 not in TURNS


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_with_turned_copies(images, memory_format):
    batch = {
        "blurry": images.contiguous(memory_format=memory_format),
        "defocus_map": images[:, :1].contiguous(memory_format=memory_format),
        "has_map": torch.tensor([True, False, True]),
    }
    paired = with_turned_copies(batch, 6)
    assert paired["turn"] == 6
    assert torch.equal(paired["has_map"], torch.tensor([True, False, True] * 2))
    for key in ("blurry", "defocus_map"):
        assert paired[key].shape == (6, *batch[key].shape[1:])
        assert paired[key].is_contiguous(memory_format=memory_format)
        assert torch.equal(paired[key][:3], batch[key])
        assert torch.equal(paired[key][3:], turn(batch[key], 6))


@pytest.mark.parametrize("code", TURNS)
def test_turn_consistency_is_zero_for_an_equivariant_estimator(images, code):
    paired = with_turned_copies({"blurry": images}, code)
    per_pixel = paired["blurry"].mean(dim=1, keepdim=True) ** 2  # commutes with any turn
    assert float(turn_consistency(per_pixel, code)) == pytest.approx(0, abs=1e-7)
    # A map that ignores the turn differs from its copy turned back, by a known amount.
    ramp = torch.linspace(0, 1, 6).expand(6, 1, 6, 6)
    expected = (ramp[:3] - turn_back(ramp[3:], code)).abs().mean()
    assert float(expected) > 0.1 or code == 2  # flipping y leaves a ramp in x as it is
    assert float(turn_consistency(ramp, code)) == pytest.approx(float(expected))


def test_stage_loss_adds_the_weighted_turn_term(images):
    paired = with_turned_copies(
        {
            "sharp": images[:, :1].expand(-1, 3, -1, -1),
            "defocus_map": images[:, 1:],
            "has_map": torch.tensor([True, True, False]),
        },
        1,
    )
    estimated, deblurred = torch.rand(6, 1, 6, 6), torch.rand(6, 3, 6, 6)
    l_dme = dme_loss(estimated, paired["defocus_map"], paired["has_map"])
    l_turn = turn_consistency(estimated, 1)
    dme = stage_loss("dme", None, estimated, paired, turn_weight=0.5)
    assert set(dme) == {"total", "l_dme", "l_turn"}
    assert float(dme["total"]) == pytest.approx(float(l_dme + 0.5 * l_turn))
    joint = stage_loss("joint", deblurred, estimated, paired, turn_weight=0.5)
    l_df = (deblurred - paired["sharp"]).abs().mean()
    assert float(joint["total"]) == pytest.approx(
        float(LAMBDA_DME * (l_dme + 0.5 * l_turn) + LAMBDA_DF * l_df)
    )
    # Weight 0, or a batch without turned copies: the paper's loss, without the term.
    for weight, batch in ((0.0, paired), (0.5, {k: v for k, v in paired.items() if k != "turn"})):
        plain = stage_loss("joint", deblurred, estimated, batch, turn_weight=weight)
        assert "l_turn" not in plain
        assert float(plain["total"]) == pytest.approx(float(LAMBDA_DME * l_dme + LAMBDA_DF * l_df))
    assert "l_turn" not in stage_loss("finetune", deblurred, estimated, paired, turn_weight=0.5)


@pytest.mark.parametrize("weight, rendered", [(0.0, 4), (1.0, 2)])
def test_the_loader_renders_half_a_batch_of_turned_pairs(weight, rendered):
    config = from_dict(
        {
            "data": {"crop": 32, "workers": 0},
            "train": {"batch": 4, "seed": 1, "turn_consistency": weight},
            "stage": [{"kind": "dme", "steps": 1}],
        }
    )
    assert config.rendered_batch == rendered
    batches = make_batches(config, 0, 0, 1, torch.device("cpu"))
    try:
        assert len(next(batches)["blurry"]) == rendered
    finally:
        batches.close()
