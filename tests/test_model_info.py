"""Tests of ``training.model_info``: parameter counts, MACs and receptive fields.

The expected figures are computed here from the layer list of the architecture
(conv shapes, resolutions and depths), independently of the hooks under test.
"""

import dataclasses
import re

import pytest
import torch
from torch import nn

from training import model_info
from training.archs import DefocusDeblurNet, DefocusMapEstimator
from training.archs.deblur_arch import VARIANTS
from training.checkpoint import save_checkpoint
from training.model_info import count_params, macs_per_pixel, model_stats, receptive_fields
from training.presets import PRESETS, NetConfig, get_config

DID_ANET_DME_PARAMS = 334_721  # DID-ANet's published DME branch (C=64, 4 blocks)


def tiny_config(
    variant: str = "sft_dec",
    scale: int = 2,
    dme_blocks: int = 1,
    num_blocks: int = 2,
    dme_dilated_blocks: int = 0,
) -> NetConfig:
    return dataclasses.replace(
        get_config("small", variant),
        scale=scale,
        dme_channels=8,
        dme_blocks=dme_blocks,
        dme_dilated_blocks=dme_dilated_blocks,
        channels=8,
        num_blocks=num_blocks,
        cond_channels=4,
        dme_full_channels=4 if scale > 1 else 0,
    )


def build(config: NetConfig) -> DefocusDeblurNet:
    torch.manual_seed(0)
    return DefocusDeblurNet(config).eval()


# ----------------------------------------------------------------------------- references
def conv_params(cin: int, cout: int, k: int) -> int:
    return cout * cin * k * k + cout


def dme_convs(c: NetConfig) -> list:
    """(cin, cout, k) of the DME at 1/scale resolution (the full-resolution stage's merge included)."""
    s2, ch, cf = c.scale**2, c.dme_channels, c.dme_full_channels
    blocks = c.dme_blocks + c.dme_dilated_blocks
    merge = [(cf * s2, ch, 1)] if cf else []
    return [(3 * s2, ch, 3)] + merge + [(ch, ch, 3)] * (2 * blocks) + [(ch, ch, 3), (ch, s2, 3)]


def dme_full_convs(c: NetConfig) -> list:
    """(cin, cout, k) of the DME's full-resolution stage before its merge (none if absent)."""
    cf = c.dme_full_channels
    return [(3, cf, 3), (cf, cf, 3)] if cf else []


def deblur_convs(c: NetConfig) -> list:
    """(cin, cout, k) of the convs that run at 1/scale resolution, condition net included."""
    s2, ch, cc = c.scale**2, c.channels, c.cond_channels
    cin = (4 if c.variant == "concat" else 3) * s2
    convs = [(cin, ch, 3)] + [(ch, ch, 3)] * (2 * c.num_blocks) + [(ch, ch, 3), (ch, 3 * s2, 3)]
    if c.variant == "concat":
        return convs
    spatial = {"full": [ch, ch], "dec": [1, ch], "fdec": [1, 1]}[_mode(c)]
    heads = []
    for out in spatial:  # SFTGAN heads: conv1x1 Cc->Cc, conv1x1 Cc->out
        heads += [(cc, cc, 1), (cc, out, 1)]
    condition = [(s2, cc, 1), (cc, cc, 1), (cc, cc, 1)]
    return convs + condition + heads * (2 * c.num_blocks)


def pooled_convs(c: NetConfig) -> list:
    """(cin, cout, k) of the channel heads, which run once on the (N, Cc, 1, 1) statistics."""
    ch, cc = c.channels, c.cond_channels
    heads = {"concat": 0, "sft": 0, "sft_dec": 1, "sft_fdec": 2}[c.variant]
    return [(cc, cc, 1), (cc, ch, 1)] * heads * 2 * c.num_blocks


def _mode(c: NetConfig) -> str:
    return {"sft": "full", "sft_dec": "dec", "sft_fdec": "fdec"}[c.variant]


def expected_params(c: NetConfig) -> int:
    convs = dme_full_convs(c) + dme_convs(c) + deblur_convs(c) + pooled_convs(c)
    return sum(conv_params(*conv) for conv in convs)


def expected_macs_per_pixel(c: NetConfig, size: int) -> float:
    per_cell = sum(cin * cout * k * k for cin, cout, k in dme_convs(c) + deblur_convs(c))
    per_pixel = sum(cin * cout * k * k for cin, cout, k in dme_full_convs(c))
    once = sum(cin * cout for cin, cout, _ in pooled_convs(c))
    return per_cell / c.scale**2 + per_pixel + once / size**2


def expected_fields(c: NetConfig) -> dict:
    """Fields in px: ``scale`` px per cell, each 3x3 conv adds a cell on both sides
    (``d`` cells at dilation ``d``; the dilated DME blocks have d = 2, 4, 8, ...).
    The DME's full-resolution stage (two 3x3 convs, 2 px a side) reaches no further
    than ``conv_first``'s cell a side at ``scale`` >= 2.

    The map reaches the SFT blocks through 1x1 convs only, so its path to the output
    skips ``conv_first``; for ``concat`` it enters with the image before ``conv_first``.
    """
    dilated = sum(2 ** (i + 1) for i in range(c.dme_dilated_blocks))
    est = 3 + 2 * c.dme_blocks + 2 * dilated  # cells per side
    rest = 3 + 2 * c.num_blocks
    through_map = est + rest - (0 if c.variant == "concat" else 1)
    total = max(rest, through_map)
    return {
        name: c.scale * (1 + 2 * n) for name, n in (("estimate", est), ("restore", rest), ("total", total))
    }


# ----------------------------------------------------------------------------- parameters
def test_dme_parameter_count_is_did_anets():
    paper = get_config("paper")
    dme = DefocusMapEstimator(paper.dme_channels, paper.dme_blocks, paper.scale)
    assert count_params(dme) == DID_ANET_DME_PARAMS
    assert sum(conv_params(*conv) for conv in dme_convs(paper)) == DID_ANET_DME_PARAMS


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_count_matches_layer_list(preset, variant):
    config = get_config(preset, variant)
    assert count_params(DefocusDeblurNet(config)) == expected_params(config)


def test_paper_concat_is_about_5_2_million():
    """DID-ANet's concatenation baseline: 5.2 M parameters (field notes)."""
    n = count_params(DefocusDeblurNet(get_config("paper", "concat")))
    assert round(n / 1e6, 1) == 5.2


@pytest.mark.parametrize("variant", VARIANTS)
def test_small_preset_is_smaller(variant):
    small, paper = (expected_params(get_config(p, variant)) for p in ("small", "paper"))
    assert 0 < small < paper / 10


# ----------------------------------------------------------------------------- MACs
@pytest.mark.parametrize(
    "conv,expected",
    [
        (nn.Conv2d(3, 5, 3, padding=1), 5 * 3 * 9),
        (nn.Conv2d(3, 7, 1), 7 * 3),
        (nn.Conv2d(3, 8, 3, stride=2, padding=1), 8 * 3 * 9 / 4),
        (nn.Conv2d(3, 6, 5, padding=2, groups=3), 6 * 1 * 25),
        (nn.Conv2d(3, 4, 3), 4 * 3 * 9 * 62 * 62 / 64**2),  # no padding: 62 x 62 outputs
    ],
)
def test_macs_of_single_conv(conv, expected):
    assert macs_per_pixel(conv, size=64) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("scale", [1, 2])
def test_macs_of_dme(scale):
    config = tiny_config(scale=scale)
    dme = DefocusMapEstimator(
        config.dme_channels, config.dme_blocks, scale, full_channels=config.dme_full_channels
    )
    per_cell = sum(cin * cout * k * k for cin, cout, k in dme_convs(config))
    expected = per_cell / scale**2 + sum(cin * cout * k * k for cin, cout, k in dme_full_convs(config))
    assert macs_per_pixel(dme, size=32) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("scale", [1, 2])
@pytest.mark.parametrize("size", [16, 64])
def test_macs_of_model(variant, scale, size):
    config = tiny_config(variant, scale)
    assert macs_per_pixel(build(config), size=size) == pytest.approx(
        expected_macs_per_pixel(config, size), rel=1e-12
    )


# ----------------------------------------------------------------------------- receptive field
@pytest.mark.parametrize("dme_blocks", [1, 2])
def test_receptive_field_of_dme_at_scale_one(dme_blocks):
    """conv_first + 2 per block + conv_body + conv_last, each 3x3: RF = 1 + 2 * convs."""
    model = build(tiny_config(scale=1, dme_blocks=dme_blocks))
    n_convs = sum(1 for m in model.dme.modules() if isinstance(m, nn.Conv2d))
    assert n_convs == 3 + 2 * dme_blocks
    assert receptive_fields(model, size=64)["estimate"] == 1 + 2 * n_convs


@pytest.mark.parametrize("dilated", [1, 2])
def test_receptive_field_of_dilated_dme_at_scale_one(dilated):
    """One plain block: 5 convs, 11 px. Each of a dilated block's two convs adds d px
    on each side (d = 2, then 4): 4d px per block."""
    model = build(tiny_config(scale=1, dme_blocks=1, dme_dilated_blocks=dilated))
    assert receptive_fields(model, size=64)["estimate"] == {1: 11 + 8, 2: 11 + 8 + 16}[dilated]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    "scale,dme_blocks,num_blocks,dilated",
    [(1, 1, 1, 0), (1, 2, 3, 0), (2, 1, 2, 0), (3, 1, 1, 0), (1, 1, 1, 2), (2, 2, 1, 3)],
)
def test_receptive_fields_match_hand_count(variant, scale, dme_blocks, num_blocks, dilated):
    config = tiny_config(variant, scale, dme_blocks, num_blocks, dilated)
    assert receptive_fields(build(config), size=96) == expected_fields(config)


def test_receptive_field_larger_than_the_probe_is_measured_on_a_larger_one():
    config = tiny_config(scale=2, dme_blocks=1, dme_dilated_blocks=3)
    assert expected_fields(config)["total"] > 96
    assert receptive_fields(build(config), size=32) == expected_fields(config)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("variant", ["concat", "sft_dec"])
def test_hand_count_of_presets_is_consistent(preset, variant):
    """The presets' fields (too slow to back-propagate here) by the same count."""
    fields = expected_fields(get_config(preset, variant))
    assert fields["total"] >= fields["restore"] and fields["total"] >= fields["estimate"]
    assert all(f % PRESETS[preset].scale == 0 for f in fields.values())


# ----------------------------------------------------------------------------- model_stats / CLI
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("scale", [1, 2])
def test_model_stats(variant, scale):
    config = tiny_config(variant, scale)
    stats = model_stats(config)
    rf = stats["receptive_field"]
    assert stats["preset"] == config.preset and stats["variant"] == variant
    assert stats["params"] == expected_params(config) > 0
    assert stats["macs_per_pixel"] == pytest.approx(expected_macs_per_pixel(config, 64))
    assert stats["macs_per_pixel"] > 0
    assert min(rf.values()) > 0
    assert rf["total"] >= rf["restore"] and rf["total"] >= rf["estimate"]
    assert rf == expected_fields(config)
    assert stats["size_multiple"] == scale


def test_cli_prints_one_row_per_preset(monkeypatch, capsys):
    tiny = {
        "tiny1": dataclasses.replace(tiny_config(scale=1), preset="tiny1"),
        "tiny2": dataclasses.replace(tiny_config(scale=2), preset="tiny2"),
    }
    monkeypatch.setattr(model_info, "PRESETS", tiny)
    monkeypatch.setattr("training.presets.PRESETS", tiny)
    assert model_info.main(["--variant", "sft_fdec"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["preset", "variant", "params"]
    assert len(lines) == 1 + len(tiny)
    for line, (name, config) in zip(lines[1:], tiny.items()):
        config = dataclasses.replace(config, variant="sft_fdec")
        fields = expected_fields(config)
        cells = line.split()
        assert cells[:3] == [name, "sft_fdec", f"{expected_params(config):,}"]
        assert re.fullmatch(r"\d+/\d+/\d+", cells[4])
        assert cells[4] == f"{fields['estimate']}/{fields['restore']}/{fields['total']}"
        assert cells[5] == str(config.scale)


def test_cli_reports_a_checkpoints_own_network(tmp_path, capsys):
    """A grown checkpoint is not its preset: the row is the network it holds."""
    config = dataclasses.replace(tiny_config(dme_blocks=2, dme_dilated_blocks=1), dme_channels=12)
    save_checkpoint(tmp_path / "ckpt", build(config))
    assert model_info.main(["--checkpoint", str(tmp_path / "ckpt")]) == 0
    cells = capsys.readouterr().out.strip().splitlines()[1].split()
    fields = expected_fields(config)
    assert cells[:3] == [str(tmp_path / "ckpt"), "sft_dec", f"{expected_params(config):,}"]
    assert cells[4] == f"{fields['estimate']}/{fields['restore']}/{fields['total']}"


def test_cli_refuses_a_missing_checkpoint_in_one_line(tmp_path, capsys):
    assert model_info.main(["--checkpoint", str(tmp_path / "none")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and captured.err.startswith("error: ")


def test_a_focus_gate_does_not_change_the_receptive_fields():
    """The gate is point-wise: a gated net sees what the ungated one sees, even where a
    trained estimator's map would close the gate on the probed cell."""
    config = tiny_config(dme_blocks=2, dme_dilated_blocks=1)
    gated = dataclasses.replace(config, gate_low=0.5, gate_high=0.9)  # closed on most of a random map
    assert receptive_fields(build(gated)) == receptive_fields(build(config)) == expected_fields(config)
