"""Checkpoint -> verified ONNX bundle (FP32 + FP16 graphs and ``manifest.json``).

    python -m export.onnx --checkpoint models/default --out models/default

Each graph is exported with dynamic batch/height/width, folded and simplified
with onnxslim, pinned to ``export.graphs.IR_VERSION``, tagged with metadata,
linted for TensorRT, checked against PyTorch (parity gate) and converted to FP16
(FP16 gate). Everything is built in a temp folder beside ``--out`` and renamed
in only when every gate passed and ``runtime.load_bundle`` reads the result: a
failed export leaves nothing behind.
"""

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Dict, List, Optional

import onnx
import onnxslim
from tqdm import tqdm

from common.hashing import sha256_file
from export import fp16 as fp16_check
from export.bundle_writer import io_spec, onnx_file, set_metadata, staged_bundle, write_manifest
from export.graphs import IR_VERSION, export_graph, graph_specs
from export.parity import PARITY_MIN_PSNR_DB, check_parity, fixed_threads
from export.trt_lint import LintError, check_model
from runtime.bundle import FORMAT, load_bundle
from runtime.errors import BundleError
from training.checkpoint import WEIGHTS, CheckpointError, load_checkpoint
from training.model_info import receptive_fields
from training.presets import INPUT_NORMALISATION, MAP_MAX, MAP_RADIUS_SCALE_PX, MAP_UNITS

LAYOUT = "NCHW"
PACKAGES = ("torch", "onnx", "onnxruntime", "onnxslim", "onnxconverter_common")


class ExportError(RuntimeError):
    """An export gate failed (one-line message)."""


def model_facts(model, config: dict) -> dict:
    """The facts shared by the manifest and every graph's ``metadata_props``."""
    net = model.config
    return {
        "format": FORMAT,
        "preset": net.preset,
        "variant": net.variant,
        "map_units": config.get("map_units", MAP_UNITS),
        "map_radius_scale_px": config.get("map_radius_scale_px", MAP_RADIUS_SCALE_PX),
        # The estimate graph clamps its output to [0, map_max], the trained range.
        "map_max": MAP_MAX,
        "input_normalisation": config.get("input_normalisation", INPUT_NORMALISATION),
        "layout": LAYOUT,
        "size_multiple": net.size_multiple,
        "receptive_field": receptive_fields(model),
        "cond_channels": net.cond_channels,
        # The restore graph passes the input through where the map is at most the first
        # and uses the deblurred pixel from the second on; [0, 0]: no gate.
        "focus_gate": [net.gate_low, net.gate_high],
    }


def package_versions() -> Dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name.replace("_", "-"))
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def build_graph(name: str, spec: dict, stage: Path, facts: dict) -> onnx.ModelProto:
    """Export, fold and simplify one graph; pin its IR version and tag it."""
    raw = stage / f".{name}.torch.onnx"
    proto = export_graph(spec, raw)
    raw.unlink()
    slim = onnxslim.slim(proto)
    slim.ir_version = IR_VERSION
    set_metadata(slim, {**facts, "graph": name, "precision": "fp32", **io_spec(slim)})
    onnx.checker.check_model(slim)
    return slim


def export_bundle(checkpoint: Path, out: Path, preset: Optional[str] = None) -> dict:
    """Export every graph of ``checkpoint`` into the bundle folder ``out``.

    Args:
        checkpoint: Checkpoint folder (or its ``model.safetensors``).
        out: Bundle folder; created, or updated in place (the checkpoint's own
            files in it are left alone).
        preset: If given, refuse a checkpoint of another preset.

    Returns:
        The manifest written to ``out/manifest.json``.

    Raises:
        CheckpointError, BundleError, LintError, ExportError: one-line reasons (BundleError
            also where the runtime cannot load what was written).
    """
    with fixed_threads():
        return _export_bundle(checkpoint, out, preset)


def _export_bundle(checkpoint: Path, out: Path, preset: Optional[str]) -> dict:
    model, config = load_checkpoint(checkpoint, preset)
    folder = Path(checkpoint).parent if Path(checkpoint).is_file() else Path(checkpoint)
    facts = model_facts(model, config)
    specs = graph_specs(model)
    with staged_bundle(out) as stage:
        fp32: Dict[str, onnx.ModelProto] = {}
        graphs, parity = {}, {}
        for name, spec in tqdm(specs.items(), desc="export", unit="graph", leave=False, disable=None):
            fp32[name] = build_graph(name, spec, stage, facts)
            check_model(fp32[name], onnx_file(name, "fp32"))
            parity[name] = check_parity(name, spec, fp32[name], model)
            if parity[name]["psnr_db"] < PARITY_MIN_PSNR_DB:
                raise ExportError(
                    f"{name}: ONNX Runtime vs PyTorch PSNR {parity[name]['psnr_db']:.1f}"
                    f" dB < {PARITY_MIN_PSNR_DB:g} dB (max abs error "
                    f"{parity[name]['max_abs_error']:.3g})"
                )
        feeds = fp16_check.graph_feeds(fp32, fp16_check.validation_images(model.config.size_multiple))
        fp16_reports = {}
        for name, model32 in tqdm(fp32.items(), desc="fp16", unit="graph", leave=False, disable=None):
            model16 = fp16_check.to_fp16(model32)
            set_metadata(model16, {**facts, "graph": name, "precision": "fp16", **io_spec(model16)})
            check_model(model16, onnx_file(name, "fp16"))
            fp16_reports[name] = fp16_check.check_fp16(model32, model16, feeds[name])
            problem = fp16_check.fp16_problem(name, fp16_reports[name])
            if problem:
                raise ExportError(problem)
            files = {p: onnx_file(name, p) for p in ("fp32", "fp16")}
            onnx.save(model32, str(stage / files["fp32"]))
            onnx.save(model16, str(stage / files["fp16"]))
            graphs[name] = {
                **io_spec(model32),
                "files": files,
                "sha256": {p: sha256_file(stage / f) for p, f in files.items()},
            }
        manifest = {
            **facts,
            "graphs": graphs,
            "checkpoint": {
                "sha256": sha256_file(folder / WEIGHTS),
                "git_commit": config.get("git_commit", "unknown"),
            },
            "versions": package_versions(),
            "parity": parity,
            "fp16": fp16_reports,
        }
        manifest["parity_min_psnr_db"] = PARITY_MIN_PSNR_DB
        manifest["fp16_min_psnr_db"] = fp16_check.FP16_MIN_PSNR_DB
        write_manifest(stage, manifest)
        load_bundle(stage)  # the runtime's reader is the contract: refuse what it cannot load
    return manifest


def summary(manifest: dict) -> List[str]:
    """Lines of the table printed after an export."""
    lines = [
        f"{'graph':10} {'parity dB':>9} {'max|err|':>9} {'fp16 dB':>8} "
        f"{'fp16 max|err|':>13} {'peak act':>9}  largest activation at"
    ]
    for name in manifest["graphs"]:
        par, half = manifest["parity"][name], manifest["fp16"][name]
        where, peak = max(half["max_activation"].items(), key=lambda kv: kv[1])
        flag = "  OVER FP16 RANGE" if peak > fp16_check.FP16_MAX else ""
        lines.append(
            f"{name:10} {par['psnr_db']:>9.1f} {par['max_abs_error']:>9.2e} "
            f"{half['psnr_db_vs_fp32']:>8.1f} {half['max_abs_error']:>13.2e} "
            f"{peak:>9.4g}  {where}{flag}"
        )
    return lines


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename or ''}: {exc.strerror}".lstrip(": ")
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.onnx", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder")
    parser.add_argument("--preset", default=None, help="refuse a checkpoint of another preset")
    args = parser.parse_args(argv)
    try:
        manifest = export_bundle(args.checkpoint, args.out, args.preset)
    except (CheckpointError, BundleError, LintError, ExportError, OSError) as exc:
        print(f"export failed: {_one_line(exc)}", file=sys.stderr)
        return 1
    print("\n".join(summary(manifest)))
    print(
        f"gates: parity >= {PARITY_MIN_PSNR_DB:g} dB, FP16 >= {fp16_check.FP16_MIN_PSNR_DB:g} dB; "
        f"bundle written to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
