"""The only module that calls TensorRT: FP16 ONNX -> serialized engine.

Type-checked against ``tensorrt-stubs`` (TensorRT 10.13 API): ``mypy export/trt_engine.py``.

The network is created STRONGLY_TYPED: the precision of every layer comes from
the FP16 ONNX (``export.fp16``), so no builder precision flag is set. TensorRT 11
removed ``BuilderFlag.FP16`` (and made strong typing the only mode, keeping the
creation flag as an ignored no-op), so this one code path builds the same FP16
engine on TensorRT 10.12+ and 11. Never fall back to ``BuilderFlag.FP16``: a
``hasattr`` guard around it silently builds FP32 engines on 11.
"""

import json
from pathlib import Path
from typing import Dict, Optional, Tuple

import tensorrt as trt

from common.atomic import atomic_write_bytes

Shape = Tuple[int, ...]

HARDWARE_LEVELS = {
    "none": trt.HardwareCompatibilityLevel.NONE,
    "ampere_plus": trt.HardwareCompatibilityLevel.AMPERE_PLUS,
    "same_compute_capability": trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY,
}


class EngineBuildError(RuntimeError):
    """TensorRT could not parse or build a graph (one-line message)."""


def tensorrt_version() -> str:
    return str(trt.__version__)


def _parse(builder: trt.Builder, logger: trt.ILogger, onnx_path: Path) -> trt.INetworkDefinition:
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(
            f"{onnx_path}: TensorRT's ONNX parser failed: " + " | ".join(e.replace("\n", " ") for e in errors)
        )
    return network


def build_engine(
    onnx_path: Path,
    shapes: Dict[str, Tuple[Shape, Shape, Shape]],
    workspace_bytes: int,
    optimization_level: int = 3,
    hardware_compatibility: str = "none",
    timing_cache: Optional[Path] = None,
) -> bytes:
    """Build a serialized engine from an FP16 ONNX file with one optimisation profile.

    Args:
        onnx_path: FP16 ONNX (FP32 I/O) of one graph.
        shapes: Input name -> (min, opt, max) shapes (``engine_plan.input_shapes``).
        workspace_bytes: Workspace memory pool limit.
        optimization_level: ``builder_optimization_level``, 0..5. Default: 3.
        hardware_compatibility: A key of ``HARDWARE_LEVELS``. Default: "none".
        timing_cache: File loaded before and saved after the build (reused across
            graphs and runs of the same TensorRT version); None builds without one.

    Returns:
        The serialized engine.

    Raises:
        EngineBuildError: parse or build failure.
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = _parse(builder, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    config.builder_optimization_level = optimization_level
    config.hardware_compatibility_level = HARDWARE_LEVELS[hardware_compatibility]
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT could not build an engine (see its log above)")
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def layer_precisions(engine_bytes: bytes) -> Dict[str, int]:
    """Count the engine's layer outputs per data type, read with the engine inspector.

    A strongly typed build of an FP16 ONNX must show mostly "Half" outputs: this is
    how an FP32 engine that should have been FP16 is caught.
    """
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise EngineBuildError("TensorRT cannot deserialize the engine it just built")
    info = json.loads(
        engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    )
    counts: Dict[str, int] = {}
    for layer in info.get("Layers", []):
        for output in layer.get("Outputs", []) if isinstance(layer, dict) else []:
            kind = str(output.get("Format/Datatype", "unknown"))
            dtype = (
                "fp16"
                if "Half" in kind or "FP16" in kind
                else ("fp32" if "Float" in kind or "FP32" in kind else "other")
            )
            counts[dtype] = counts.get(dtype, 0) + 1
    return counts
