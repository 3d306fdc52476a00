"""Bundle -> TensorRT FP16 engines, one per graph, recorded in the manifest.

    python -m export.engine --bundle models/default [--tile 512 --batch 4] [--force]

An engine whose key (FP16 ONNX sha256, TensorRT version, GPU name and compute
capability, profile, hardware compatibility) matches the manifest is reused;
any other is rebuilt. ``--force`` rebuilds all. Exit status: 0 done, 1 error,
3 TensorRT, cuda-python, driver or GPU missing (the ONNX bundle still runs).
"""

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from tqdm import tqdm

from common.atomic import atomic_write_bytes
from common.hashing import sha256_file
from export.bundle_writer import engine_file, read_manifest, write_manifest
from export.engine_plan import (
    HARDWARE_COMPATIBILITY,
    Profile,
    compute_profile,
    engine_key,
    engines_section,
    input_shapes,
    reusable,
    tensorrt_missing_message,
)
from runtime.bundle import GRAPH_NAMES
from runtime.errors import BundleError, MissingDependency
from runtime.gpu import cuda_gpus, import_tensorrt

EXIT_MISSING = 3
TIMING_CACHE = "trt_timing.cache"


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export.engine", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder (make export)")
    parser.add_argument("--force", action="store_true", help="rebuild engines that match")
    parser.add_argument("--tile", type=int, default=512, help="runtime tile side: opt H, W")
    parser.add_argument("--batch", type=int, default=4, help="opt batch")
    parser.add_argument(
        "--max-batch",
        type=int,
        default=8,
        help="largest tiles per call the engines accept (profile max batch)",
    )
    parser.add_argument("--min-size", type=int, default=64, help="smallest H, W")
    parser.add_argument("--max-size", type=int, default=1024, help="largest H, W")
    parser.add_argument("--workspace-gib", type=float, default=4.0, help="workspace pool limit")
    parser.add_argument(
        "--opt-level", type=int, default=3, choices=range(6), help="builder_optimization_level"
    )
    parser.add_argument(
        "--hardware-compatibility",
        default="none",
        choices=HARDWARE_COMPATIBILITY,
        help="none: engines run on this GPU model only (fastest); ampere_plus: on any "
        "Ampere or newer GPU; same_compute_capability: on GPUs of this one's "
        "compute capability",
    )
    args = parser.parse_args(argv)
    if args.workspace_gib <= 0:
        parser.error(f"--workspace-gib must be > 0, got {args.workspace_gib}")
    return args


def plan(args: argparse.Namespace) -> tuple:
    """Checks that need no TensorRT: (manifest, profile). Raises BundleError / ValueError."""
    manifest = read_manifest(args.bundle)
    profile = compute_profile(
        args.tile, args.batch, args.max_batch, args.min_size, args.max_size, manifest["size_multiple"]
    )
    for name, graph in manifest["graphs"].items():
        onnx_path = args.bundle / graph["files"]["fp16"]
        if not onnx_path.is_file():
            raise BundleError(f"{onnx_path}: missing (run `make export` again)")
    return manifest, profile


def build_all(args: argparse.Namespace, manifest: dict, profile: Profile) -> dict:
    """Build or reuse every graph's engine; return the updated manifest."""
    from export import trt_engine  # TensorRT is imported only once it is known to exist

    gpu = cuda_gpus()[0]
    version = trt_engine.tensorrt_version()
    graphs = {}
    names = [g for g in GRAPH_NAMES if g in manifest["graphs"]]
    for name in tqdm(names, desc="engines", unit="graph", disable=None):
        onnx_path = args.bundle / manifest["graphs"][name]["files"]["fp16"]
        key = engine_key(sha256_file(onnx_path), version, gpu, profile, args.hardware_compatibility)
        target = args.bundle / engine_file(name)
        if not args.force and reusable(manifest, args.bundle, name, key):
            graphs[name] = manifest["engines"]["fp16"]["graphs"][name]
            print(f"{name}: engine matches, reused ({target})")
            continue
        shapes = input_shapes(manifest["graphs"][name]["inputs"], profile)
        blob = trt_engine.build_engine(
            onnx_path,
            shapes,
            int(args.workspace_gib * (1 << 30)),
            args.opt_level,
            args.hardware_compatibility,
            args.bundle / TIMING_CACHE,
        )
        atomic_write_bytes(target, blob)
        graphs[name] = {
            "file": target.name,
            "onnx_sha256": key["onnx_sha256"],
            "engine_sha256": sha256_file(target),
            "layer_precisions": trt_engine.layer_precisions(blob),
        }
        print(
            f"{name}: built {target} ({len(blob) / 2**20:.1f} MiB, "
            f"layer outputs {graphs[name]['layer_precisions']})"
        )
    return {**manifest, "engines": {"fp16": engines_section(key, graphs)}}


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        manifest, profile = plan(args)
        if import_tensorrt() is None:
            raise MissingDependency(tensorrt_missing_message(args.bundle))
        manifest = build_all(args, manifest, profile)
        write_manifest(args.bundle, manifest)
    except MissingDependency as exc:
        print(exc, file=sys.stderr)
        return EXIT_MISSING
    except (BundleError, ValueError, RuntimeError, OSError) as exc:
        print(f"engine build failed: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"engines recorded in {args.bundle / 'manifest.json'} (profile {profile.to_dict()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
