"""The model under test: the trained default bundle, or a random ``small`` stand-in.

Every backend measures the same weights: the PyTorch paths load the checkpoint, the
ONNX and runtime paths its bundle (exported here when the checkpoint has none, or
when the bundle's manifest names other weights).
"""

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from benchmarks.machine import REPO

DEFAULT_MODEL = REPO / "models" / "default"
STANDIN_PRESET = "small"


def shown(path: Path) -> str:
    """``path`` as reports print it: relative to the repository where it lies inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


class ModelError(ValueError):
    """The model asked for cannot be used (one-line message)."""


@dataclass
class ModelSource:
    """Where the weights come from.

    Attributes:
        checkpoint: Checkpoint folder (``model.safetensors`` + ``config.json``).
        bundle: Bundle folder with ``manifest.json``, or None (export failed / not needed).
        trained: False for the random stand-in.
        note: One line for the report header.
        bundle_error: Why there is no bundle, where one was needed.
    """

    checkpoint: Path
    bundle: Optional[Path]
    trained: bool
    note: str
    bundle_error: Optional[str] = None


def random_checkpoint(folder: Path, preset: str = STANDIN_PRESET, seed: int = 0) -> Path:
    """Save a randomly initialised ``preset`` model (seeded) as a checkpoint in ``folder``
    (``benchmarks.prepare standin``, in its own process)."""
    from benchmarks.prepare import run_step

    run_step("standin", [str(folder), "--preset", preset, "--seed", str(seed)], Path(folder).parent)
    return Path(folder)


def _bundle_matches(checkpoint: Path) -> bool:
    """True where ``checkpoint`` holds a manifest made from these very weights."""
    from common.hashing import sha256_file

    manifest = checkpoint / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return data.get("checkpoint", {}).get("sha256") == sha256_file(checkpoint / "model.safetensors")


def export_bundle(checkpoint: Path, out: Path) -> Optional[str]:
    """Export ``checkpoint`` to ``out`` with ``python -m export.onnx``; the error line or None."""
    proc = subprocess.run(
        [sys.executable, "-m", "export.onnx", "--checkpoint", str(checkpoint), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if proc.returncode == 0:
        return None
    lines = [ln for ln in (proc.stderr + proc.stdout).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"export.onnx exited with {proc.returncode}"


def resolve_model(model: Optional[Path], work: Path, need_bundle: bool) -> ModelSource:
    """The checkpoint and bundle to benchmark.

    Args:
        model: Checkpoint folder (a bundle beside its weights is used when it matches
            them); None: ``models/default`` if present, else a random ``small`` model.
        work: Scratch folder for the stand-in and an exported bundle.
        need_bundle: Whether any ONNX / runtime backend will run.

    Raises:
        ModelError: ``model`` was given but is not a checkpoint folder.
    """
    if model is None and (DEFAULT_MODEL / "model.safetensors").is_file():
        model = DEFAULT_MODEL
    if model is None:
        checkpoint = random_checkpoint(work / "standin")
        trained, note = (
            False,
            (
                f"no trained model in {shown(DEFAULT_MODEL)}: a randomly "
                f"initialised `{STANDIN_PRESET}` model (seed 0) stands in; speed and "
                "fidelity are representative, restoration quality is not"
            ),
        )
    else:
        checkpoint = Path(model)
        if checkpoint.is_file():
            checkpoint = checkpoint.parent
        if not (checkpoint / "model.safetensors").is_file() or not (checkpoint / "config.json").is_file():
            raise ModelError(f"{model}: not a checkpoint folder (needs model.safetensors and config.json)")
        trained, note = True, f"checkpoint {shown(checkpoint)}"
    if not need_bundle:
        return ModelSource(checkpoint, None, trained, note)
    if _bundle_matches(checkpoint):
        return ModelSource(checkpoint, checkpoint, trained, note + ", its own ONNX bundle")
    error = export_bundle(checkpoint, work / "bundle")
    bundle = None if error else work / "bundle"
    return ModelSource(
        checkpoint,
        bundle,
        trained,
        note + ", ONNX bundle exported for this run",
        bundle_error=f"bundle export failed: {error}" if error else None,
    )
