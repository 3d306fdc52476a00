"""Options and set-up shared by ``runtime.infer`` and ``runtime.stream``."""

import argparse
import logging
import sys
from pathlib import Path
from typing import NoReturn

from runtime.backend import BACKENDS, DEVICES
from runtime.bundle import load_bundle
from runtime.deblurrer import Deblurrer


def prog(module: str) -> str:
    """The command as the user typed it, for usage lines: the console script's name
    (``defocus-deblur``, pyproject.toml [project.scripts]), else ``python -m <module>``."""
    name = Path(sys.argv[0]).name
    return name if name.startswith("defocus-") else f"python -m {module}"


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and backend")
    group.add_argument(
        "--model",
        default=None,
        help="bundle folder, its manifest.json, or one of its .onnx / .engine files "
        "(default: models/default)",
    )
    group.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto: TensorRT where an engine fits this GPU; on the CPU OpenVINO "
        "where installed; else ONNX Runtime",
    )
    group.add_argument(
        "--device", choices=DEVICES, default="auto", help="auto: cuda when a GPU is visible (default)"
    )
    group.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16"),
        default=None,
        help="default: fp16 on TensorRT; on OpenVINO bf16 where the CPU has it; else fp32",
    )
    group.add_argument(
        "--tile",
        type=int,
        default=None,
        help="largest tile size in px (default 1024 on the CPU, 512 on a GPU; "
        "the estimate pass uses twice this)",
    )
    group.add_argument(
        "--overlap", type=int, default=None, help="tile overlap in px (default: receptive field + 16)"
    )
    group.add_argument(
        "--tile-batch", type=int, default=None, help="tiles per graph call (default 1 on the CPU, 4 on a GPU)"
    )
    group.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of ONNX Runtime / OpenVINO (default: all cores)",
    )
    group.add_argument("--cuda-graphs", action="store_true", help="TensorRT: replay CUDA graphs")
    group.add_argument(
        "--self-ensemble",
        type=int,
        default=1,
        metavar="N",
        help="average N flipped / transposed passes restored from one combined map "
        "(1, 2, 4 or 8): better output at N times the cost (default 1)",
    )
    group.add_argument(
        "--defocus-scale",
        type=float,
        default=1.0,
        help="multiply the defocus map: deblurring strength (default 1.0)",
    )
    group.add_argument("-q", "--quiet", action="store_true", help="log warnings only")


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )


def build_deblurrer(args: argparse.Namespace) -> Deblurrer:
    """A ``Deblurrer`` from the parsed model options (errors propagate as DeblurError)."""
    return Deblurrer(
        load_bundle(args.model),
        backend=args.backend,
        device=args.device,
        precision=args.precision,
        tile=args.tile,
        overlap=args.overlap,
        tile_batch=args.tile_batch,
        threads=args.threads,
        cuda_graphs=args.cuda_graphs,
        self_ensemble=args.self_ensemble,
    )


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one error line and exit."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)
