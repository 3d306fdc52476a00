"""Tests of ``training.checkpoint``: round trip, atomic writes and one-line errors."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from common.atomic import atomic_write
from training.archs import DefocusDeblurNet
from training.archs.deblur_arch import VARIANTS
from training.checkpoint import (
    CONFIG,
    FORMAT,
    WEIGHTS,
    CheckpointError,
    load_checkpoint,
    load_state,
    read_config,
    save_checkpoint,
)
from training.presets import MAP_RADIUS_SCALE_PX, MAP_UNITS, get_config


def tiny_model(variant: str = "sft_dec", preset: str = "small", seed: int = 0) -> DefocusDeblurNet:
    config = dataclasses.replace(
        get_config(preset, variant),
        scale=2,
        dme_channels=8,
        dme_blocks=1,
        dme_dilated_blocks=1,
        channels=8,
        num_blocks=1,
        cond_channels=4,
    )
    torch.manual_seed(seed)
    return DefocusDeblurNet(config).eval()


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, tiny_model())
    return folder


def assert_one_line_naming(exc_info, path) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and message
    assert str(path) in message
    return message


# ----------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("variant", VARIANTS)
def test_round_trip_gives_identical_outputs(tmp_path, variant):
    model = tiny_model(variant, seed=3)
    save_checkpoint(tmp_path / "run" / "best", model)  # parents are created
    loaded, config = load_checkpoint(tmp_path / "run" / "best")
    assert not loaded.training
    assert loaded.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    image = torch.rand(2, 3, 10, 6)
    with torch.no_grad():
        for before, after in zip(model(image), loaded(image)):
            assert torch.equal(before, after)


def test_load_from_weights_file_path(checkpoint):
    model, _ = load_checkpoint(checkpoint / WEIGHTS)
    assert model.config == tiny_model().config


def test_config_json_describes_the_model(tmp_path):
    model = tiny_model("sft_fdec")
    save_checkpoint(tmp_path, model, extra={"epoch": 12, "psnr": 25.5})
    config = json.loads((tmp_path / CONFIG).read_text())
    assert config["format"] == FORMAT
    assert config["net"] == model.config.to_dict()
    assert config["map_units"] == MAP_UNITS
    assert config["map_radius_scale_px"] == MAP_RADIUS_SCALE_PX
    assert config["size_multiple"] == model.config.size_multiple == 2
    assert config["epoch"] == 12 and config["psnr"] == 25.5
    assert isinstance(config["git_commit"], str) and config["git_commit"]
    assert read_config(tmp_path) == config


def test_resave_overwrites(tmp_path):
    save_checkpoint(tmp_path, tiny_model(seed=1))
    second = tiny_model(seed=2)
    save_checkpoint(tmp_path, second)
    loaded, _ = load_checkpoint(tmp_path)
    assert torch.equal(
        loaded.state_dict()["dme.conv_first.weight"], second.state_dict()["dme.conv_first.weight"]
    )


@pytest.mark.parametrize("preset", ["small", "paper"])
def test_matching_preset_loads(tmp_path, preset):
    save_checkpoint(tmp_path, tiny_model(preset=preset))
    model, _ = load_checkpoint(tmp_path, preset=preset)
    assert model.config.preset == preset


# ----------------------------------------------------------------------------- atomic writes
def test_save_leaves_no_temp_files(checkpoint):
    assert sorted(p.name for p in checkpoint.iterdir()) == sorted([CONFIG, WEIGHTS])


def test_atomic_write_gives_umask_permissions_not_0600(tmp_path):
    target = tmp_path / "out.txt"
    old = os.umask(0o022)
    try:
        atomic_write(target, lambda tmp: Path(tmp).write_text("x"))
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o644


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write(target, lambda tmp: Path(tmp).write_text("first"))
    atomic_write(target, lambda tmp: Path(tmp).write_text("second"))
    assert target.read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


@pytest.mark.parametrize("exc_type", [OSError, KeyboardInterrupt])
def test_failed_atomic_write_keeps_old_file_and_no_temp(tmp_path, exc_type):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def half_write(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise exc_type("disk full")

    with pytest.raises(exc_type, match="disk full"):
        atomic_write(target, half_write)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_write_into_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "missing" / "out.txt", lambda tmp: None)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- damaged checkpoints
@pytest.mark.parametrize("damage", [b"", b"not a safetensors file", b"\xff" * 64, "truncate"])
def test_corrupt_weights(checkpoint, damage):
    weights = checkpoint / WEIGHTS
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else damage)
    with pytest.raises(CheckpointError) as exc_info:
        load_checkpoint(checkpoint)
    assert "unreadable weights" in assert_one_line_naming(exc_info, weights)


def test_missing_weights(checkpoint):
    (checkpoint / WEIGHTS).unlink()
    with pytest.raises(CheckpointError) as exc_info:
        load_checkpoint(checkpoint)
    assert_one_line_naming(exc_info, checkpoint / WEIGHTS)


@pytest.mark.parametrize("text", ["{", "", '{"format": }', "\ud800"])
def test_corrupt_json(checkpoint, text):
    path = checkpoint / CONFIG
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    with pytest.raises(CheckpointError) as exc_info:
        load_checkpoint(checkpoint)
    assert "not valid JSON" in assert_one_line_naming(exc_info, path)


@pytest.mark.parametrize("content", [[1, 2], {"format": "other/1"}, {"net": {}}, "null"])
def test_wrong_format(checkpoint, content):
    path = checkpoint / CONFIG
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(CheckpointError) as exc_info:
        load_checkpoint(checkpoint)
    assert f"expected {FORMAT!r}" in assert_one_line_naming(exc_info, path)


def test_missing_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(CheckpointError) as exc_info:
        load_checkpoint(missing)
    assert "no such checkpoint" in assert_one_line_naming(exc_info, missing)


def test_folder_without_config(tmp_path):
    with pytest.raises(CheckpointError) as exc_info:
        load_checkpoint(tmp_path)
    assert f"no {CONFIG}" in assert_one_line_naming(exc_info, tmp_path)


def test_preset_mismatch(checkpoint):
    with pytest.raises(CheckpointError) as exc_info:
        load_checkpoint(checkpoint, preset="paper")
    message = assert_one_line_naming(exc_info, checkpoint)
    assert "preset 'small', expected 'paper'" in message


@pytest.mark.parametrize(
    "edit",
    [
        lambda net: net.pop("preset"),
        lambda net: net.update(width=3),
        lambda net: net.update(channels="wide"),
        lambda net: net.update(channels=-1),
        lambda net: net.update(variant="bogus"),
    ],
    ids=["no-preset", "unknown-key", "str-width", "negative-width", "bad-variant"],
)
def test_bad_network_config(checkpoint, edit):
    path = checkpoint / CONFIG
    config = json.loads(path.read_text())
    edit(config["net"])
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as exc_info:
        load_checkpoint(checkpoint)
    assert "bad network config" in assert_one_line_naming(exc_info, path)


@pytest.mark.parametrize("change", [{"channels": 16}, {"variant": "concat"}, {"num_blocks": 2}])
def test_weights_that_do_not_fit_config(checkpoint, change):
    path = checkpoint / CONFIG
    config = json.loads(path.read_text())
    config["net"].update(change)
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as exc_info:
        load_checkpoint(checkpoint)
    message = assert_one_line_naming(exc_info, checkpoint / WEIGHTS)
    assert "weights do not fit the config" in message


@pytest.mark.parametrize("damage", [b"", b"garbage", b"\x80\x02}q\x00"])
def test_corrupt_trainer_state(tmp_path, damage):
    path = tmp_path / "state.pt"
    path.write_bytes(damage)
    with pytest.raises(CheckpointError) as exc_info:
        load_state(path)
    assert "unreadable trainer state" in assert_one_line_naming(exc_info, path)


def test_trainer_state_round_trip(tmp_path):
    path = tmp_path / "state.pt"
    state = {"epoch": 3, "rng": torch.get_rng_state()}
    torch.save(state, path)
    loaded = load_state(path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["rng"], state["rng"])
