"""Model checkpoints: safetensors weights + a JSON description, written atomically.

A checkpoint is a folder holding ``model.safetensors`` and ``config.json``; the
trainer adds ``state.pt`` (optimizer, schedule, RNG) beside them to resume.
"""

import json
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from common.atomic import atomic_write
from common.jsonfile import read_versioned_json
from training.archs import DefocusDeblurNet
from training.archs.dme_arch import dme_dilations
from training.presets import INPUT_NORMALISATION, MAP_MAX, MAP_RADIUS_SCALE_PX, MAP_UNITS, NetConfig

FORMAT = "defocus-deblur-checkpoint/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not fit what was asked of it."""


def git_commit() -> str:
    """The repository's commit, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def save_checkpoint(folder: Path, model: DefocusDeblurNet, extra: Optional[dict] = None) -> None:
    """Write weights and config into ``folder`` (created if needed), each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config = {
        "format": FORMAT,
        "net": model.config.to_dict(),
        "map_units": MAP_UNITS,
        "map_radius_scale_px": MAP_RADIUS_SCALE_PX,
        "map_max": MAP_MAX,
        "input_normalisation": INPUT_NORMALISATION,
        "size_multiple": model.config.size_multiple,
        "git_commit": git_commit(),
        **(extra or {}),
    }
    atomic_write(folder / WEIGHTS, lambda tmp: save_file(state, tmp))
    atomic_write(folder / CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2)))


def read_config(folder: Path) -> dict:
    """The checkpoint's ``config.json``, checked for format."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a checkpoint (no {CONFIG})")
    return read_versioned_json(path, FORMAT, CheckpointError)


def load_checkpoint(path: Path, preset: Optional[str] = None) -> Tuple[DefocusDeblurNet, dict]:
    """Load a model from a checkpoint folder (or its ``model.safetensors``).

    Args:
        path: Checkpoint folder or the weights file inside one.
        preset: If given, refuse a checkpoint of another preset.

    Returns:
        (model in eval mode on CPU, the checkpoint's config dict).

    Raises:
        CheckpointError: with a one-line reason.
    """
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    if not folder.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    config = read_config(folder)
    try:
        net = NetConfig.from_dict(config["net"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{folder / CONFIG}: bad network config ({exc})") from None
    if preset is not None and net.preset != preset:
        raise CheckpointError(f"{folder}: checkpoint is preset {net.preset!r}, expected {preset!r}")
    try:
        state = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{folder / WEIGHTS}: unreadable weights ({exc})") from None
    try:
        model = DefocusDeblurNet(net)
    except (TypeError, ValueError, RuntimeError) as exc:  # e.g. a width that is not an int
        raise CheckpointError(f"{folder / CONFIG}: bad network config ({exc})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{folder / WEIGHTS}: weights do not fit the config ({first})") from None
    return model.eval(), config


def init_from(model: DefocusDeblurNet, path: Path, preset: str) -> List[str]:
    """Copy a checkpoint's weights into ``model`` to train on from them (``--init``).

    The checkpoint's network must equal ``model``'s but may have fewer DME residual
    blocks, plain or dilated, as long as its blocks are the first of ``model``'s, may
    lack the DME's full-resolution stage or have fewer channels in it, and may have
    fewer DME channels. What is added starts as the identity, so the grown model
    computes exactly what the checkpoint did:

    - a new block's closing conv, and a new stage's merging 1x1 conv, are zeroed;
    - a wider estimator, or full-resolution stage, keeps the old channels as its first
      ones (``_widen``; ``pixel_unshuffle`` keeps a channel's cells together, so they
      stay first after it): the new channels start from the fresh init, and only what
      old channels read from new ones is zeroed, so the new channels learn at once.

    The focus gate (``NetConfig.gate_low`` / ``gate_high``) has no weights: ``model``'s
    applies, set, changed or removed, and the result says so.

    Returns:
        What grew or changed, in words (empty when nothing did).

    Raises:
        CheckpointError: with a one-line reason.
    """
    source, _ = load_checkpoint(path, preset)
    theirs, mine = source.config, model.config
    their_blocks = dme_dilations(theirs.dme_blocks, theirs.dme_dilated_blocks)
    my_blocks = dme_dilations(mine.dme_blocks, mine.dme_dilated_blocks)
    grows = dict(
        dme_blocks=mine.dme_blocks,
        dme_dilated_blocks=mine.dme_dilated_blocks,
        gate_low=mine.gate_low,
        gate_high=mine.gate_high,
    )
    adds_stage = theirs.dme_full_channels == 0 and mine.dme_full_channels > 0
    if mine.dme_full_channels > theirs.dme_full_channels:
        grows["dme_full_channels"] = mine.dme_full_channels
    if mine.dme_channels > theirs.dme_channels:
        grows["dme_channels"] = mine.dme_channels
    if replace(theirs, **grows) != mine or my_blocks[: len(their_blocks)] != their_blocks:
        raise CheckpointError(
            f"{path}: its network ({theirs}) does not fit {mine}; "
            "only DME blocks, DME channels and full-resolution channels may be added, "
            "and the focus gate set"
        )
    fresh = model.state_dict()
    state = {
        name: _widen(value, fresh[name]) if value.shape != fresh[name].shape else value
        for name, value in source.state_dict().items()
    }
    model.load_state_dict(state, strict=False)
    closing = [block.conv2 for block in model.dme.body[len(their_blocks) :]]
    if adds_stage:
        closing.append(model.dme.full[-1])
    for conv in closing:
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    grown = [f"{len(my_blocks) - len(their_blocks)} residual blocks"] if my_blocks != their_blocks else []
    if adds_stage:
        grown.append("the full-resolution stage")
    elif "dme_full_channels" in grows:
        grown.append(f"full-resolution channels {theirs.dme_full_channels} -> {mine.dme_full_channels}")
    if "dme_channels" in grows:
        grown.append(f"channels {theirs.dme_channels} -> {mine.dme_channels}")
    if (theirs.gate_low, theirs.gate_high) != (mine.gate_low, mine.gate_high):
        grown.append(mine.gate_text)
    return grown


def _widen(old: Tensor, fresh: Tensor) -> Tensor:
    """``fresh`` with ``old`` in its leading slice and the weights from new input
    channels into old output channels zeroed: the old outputs compute what they did.

    Shape: a conv weight (out, in, k, k) or a bias (out,), ``old`` no larger than
    ``fresh`` in any dimension.
    """
    widened = fresh.clone()
    if widened.dim() > 1:
        widened[: old.shape[0], old.shape[1] :] = 0
    widened[tuple(slice(0, n) for n in old.shape)] = old
    return widened


def load_state(path: Path) -> dict:
    """torch.load a trainer state file, turning damage into CheckpointError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for damaged pickles
        raise CheckpointError(f"{path}: unreadable trainer state ({type(exc).__name__})") from None
