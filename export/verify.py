"""Compare a bundle's FP16 path with ONNX Runtime FP32, using polygraphy.

    python -m export.verify --bundle models/default

Where TensorRT and a GPU are present, each graph's engine (refused first if stale
or foreign) runs against ONNX Runtime FP32 on the same inputs. Elsewhere the FP16
ONNX runs in ONNX Runtime instead, and the output says so. Inputs are the export's
validation-like images (noise and smooth), chained through the FP32 graphs.
An output element fails where it exceeds both tolerances (polygraphy "elemwise").
"""

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import onnx
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
from polygraphy.comparator import Comparator, SimpleCompareFunc
from polygraphy.logger import G_LOGGER

from export.engine_plan import tensorrt_missing_message
from export.fp16 import graph_feeds, validation_images
from runtime.bundle import Bundle, check_engines, load_bundle
from runtime.errors import BundleError, MissingDependency
from runtime.gpu import cuda_gpus, import_tensorrt

#: FP16 (TensorRT engine or ONNX Runtime) vs ONNX Runtime FP32.
ATOL = 1e-2
RTOL = 1e-2
#: Side of the verification images on the TensorRT path (clamped into the profile).
TRT_SIDE = 256


def _ort(path: Path) -> OnnxrtRunner:
    return OnnxrtRunner(SessionFromOnnx(str(path), providers=["CPUExecutionProvider"]))


def fp16_runners(bundle: Bundle) -> Tuple[str, dict, Optional[int]]:
    """(description, graph -> runner under test, image side) for this machine."""
    reason = ""
    if import_tensorrt() is not None:
        try:
            gpu = cuda_gpus()[0]
        except MissingDependency as exc:
            reason = str(exc)
        else:
            from polygraphy.backend.trt import EngineFromBytes, TrtRunner

            from export import trt_engine

            version = trt_engine.tensorrt_version()
            engines = check_engines(bundle, "fp16", version, gpu)
            runners = {name: TrtRunner(EngineFromBytes(path.read_bytes())) for name, path in engines.items()}
            profile = bundle.engines["fp16"]["profile"]
            side = min(max(TRT_SIDE, profile["min"][1]), profile["max"][1])
            side -= side % bundle.size_multiple
            return f"TensorRT {version} engines on {gpu.name}", runners, side
    else:
        reason = tensorrt_missing_message(bundle.root)
    runners = {name: _ort(bundle.onnx_path(name, "fp16")) for name in bundle.graphs}
    return f"ONNX Runtime FP16 (no TensorRT run: {reason})", runners, None


def max_abs_error(results) -> float:
    """Largest |test - reference| over every iteration and output of a two-runner run."""
    (_, test), (_, ref) = results.items()
    return max(
        float(np.abs(np.asarray(t[k]) - np.asarray(r[k])).max()) for t, r in zip(test, ref) for k in t.keys()
    )


def verify(bundle: Path) -> bool:
    """Run the comparison of every graph; True where all outputs are within tolerance."""
    G_LOGGER.module_severity = G_LOGGER.WARNING
    loaded = load_bundle(bundle)
    what, runners, side = fp16_runners(loaded)
    print(f"comparing {what} against ONNX Runtime FP32, atol {ATOL:g}, rtol {RTOL:g}")
    size = {"height": side, "width": side} if side else {}
    images = validation_images(loaded.size_multiple, **size)
    fp32 = {name: onnx.load(str(loaded.onnx_path(name, "fp32"))) for name in loaded.graphs}
    feeds = graph_feeds(fp32, images)
    passed = True
    for name in loaded.graphs:
        reference = _ort(loaded.onnx_path(name, "fp32"))
        results = Comparator.run([runners[name], reference], data_loader=feeds[name])
        ok = bool(Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=ATOL, rtol=RTOL)))
        print(
            f"{name}: {'PASSED' if ok else 'FAILED'} (max abs error {max_abs_error(results):.3g} "
            f"over {len(feeds[name])} inputs)"
        )
        passed = passed and ok
    return passed


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.verify", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        ok = verify(args.bundle)
    except (BundleError, OSError) as exc:
        print(f"verify failed: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
