"""OpenVINO backend: the bundle's FP32 ONNX graphs on the CPU, in FP32 or BF16.

OpenVINO reads the FP32 ONNX files itself; ``INFERENCE_PRECISION_HINT`` picks the
arithmetic (``bf16`` runs the convolutions in bfloat16 with FP32 accumulation where
the CPU has native BF16, e.g. AVX512_BF16 or AMX). The tile graphs (``estimate``,
``restore``) are compiled for one static shape each, since the runtime uses one tile
shape per image and static shapes run faster; the cheap ``condition`` graph, whose
chunks vary in size, is compiled once with dynamic shapes.
"""

import logging
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import openvino as ov  # type: ignore[import-untyped, unused-ignore]

from runtime import validate
from runtime.backend import Backend
from runtime.bundle import Bundle
from runtime.device_arrays import is_device_array
from runtime.errors import BackendError

log = logging.getLogger("runtime")

#: The backend's precision names -> OpenVINO's ``INFERENCE_PRECISION_HINT``.
PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
#: Graphs compiled per input shape; the others are compiled once, dynamic.
STATIC_GRAPHS = ("estimate", "restore")
#: Compiled shapes kept per static graph. A 1024² restore request holds about 700 MB of
#: activations, so only a self-ensemble's two orientations of one tile shape are kept.
SHAPES_PER_GRAPH = 2

Shapes = Tuple[Tuple[str, Tuple[int, ...]], ...]


def cpu_capabilities(core: Any) -> List[str]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU, e.g. ``['FP32', 'BF16', 'INT8']``."""
    return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def best_precision(capabilities: Sequence[str]) -> str:
    """``bf16`` where the CPU reports native BF16, else ``fp32``."""
    return "bf16" if "BF16" in capabilities else "fp32"


def _reason(err: Exception) -> str:
    """The informative line of an OpenVINO exception (its first lines name C++ sources)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith("Exception from")]
    return (useful or lines or [type(err).__name__])[0]


class OpenVinoBackend(Backend):
    """OpenVINO compiled models of the bundle's FP32 graphs, on the CPU.

    Args:
        bundle: The loaded bundle.
        precision: ``fp32``, ``bf16``, or None for ``best_precision`` of this CPU.
        threads: ``INFERENCE_NUM_THREADS``; None lets OpenVINO use all cores.

    Raises:
        BackendError: BF16 asked for on a CPU without it, an unreadable graph, or inputs
            that differ from the manifest's.
    """

    name = "openvino"

    def __init__(self, bundle: Bundle, precision: Optional[str] = None, threads: Optional[int] = None):
        core = ov.Core()
        capabilities = cpu_capabilities(core)
        precision = precision or best_precision(capabilities)
        if precision not in PRECISIONS:
            raise BackendError(f"OpenVINO runs precision fp32 or bf16 on the CPU, not {precision!r}")
        if precision == "bf16" and "BF16" not in capabilities:
            raise BackendError(
                f"this CPU has no native BF16 (OpenVINO reports "
                f"{', '.join(capabilities)}): use --precision fp32"
            )
        super().__init__(bundle, "cpu", precision)
        self.core = core
        self.config: Dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": PRECISIONS[precision],
            "PERFORMANCE_HINT": "LATENCY",
        }
        validate.check_threads(threads)
        if threads is not None:
            self.config["INFERENCE_NUM_THREADS"] = threads
        self.models = {name: self._read(name) for name in bundle.graphs}
        self.outputs = {
            name: [o.get_any_name() for o in model.outputs] for name, model in self.models.items()
        }
        self._requests: Dict[str, "OrderedDict[Shapes, Any]"] = {
            name: OrderedDict() for name in bundle.graphs
        }

    def _read(self, graph: str) -> Any:
        path = self.bundle.onnx_path(graph, "fp32")
        try:
            model = self.core.read_model(str(path))
        except RuntimeError as err:
            raise BackendError(f"OpenVINO cannot read {path}: {_reason(err)}") from None
        expected = [t.name for t in self.bundle.graphs[graph].inputs]
        found = [i.get_any_name() for i in model.inputs]
        if found != expected:
            raise BackendError(
                f"{path.name}: inputs {found} differ from the manifest's {expected} "
                "(a stale bundle: export it again)"
            )
        return model

    def describe(self) -> str:
        return f"openvino {ov.__version__.split('-')[0]} on cpu, {self.precision}"

    def _request(self, graph: str, shapes: Shapes) -> Any:
        """The infer request of ``graph`` compiled for ``shapes`` (compiled on first use)."""
        key: Shapes = shapes if graph in STATIC_GRAPHS else ()
        cache = self._requests[graph]
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        model = self.models[graph]
        if key:
            model = model.clone()
            model.reshape({name: list(shape) for name, shape in key})
        try:
            request = self.core.compile_model(model, "CPU", self.config).create_infer_request()
        except RuntimeError as err:
            raise BackendError(f"OpenVINO cannot compile {graph!r} for {dict(key)}: {_reason(err)}") from None
        log.debug("openvino: compiled %s for %s", graph, dict(key) or "dynamic shapes")
        cache[key] = request
        if len(cache) > SHAPES_PER_GRAPH:
            cache.popitem(last=False)
        return request

    def run(self, graph: str, inputs: Dict[str, Any]) -> Dict[str, Any]:
        if any(is_device_array(v) for v in inputs.values()):
            raise BackendError("GPU arrays need a GPU backend: OpenVINO runs on the CPU")
        feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()}
        request = self._request(graph, tuple((k, tuple(v.shape)) for k, v in feeds.items()))
        # share_inputs: no copy of the tiles; the outputs are copied out of the request's
        # buffers, which the next call of this shape overwrites.
        result = request.infer(feeds, share_inputs=True)
        return {name: result[name] for name in self.outputs[graph]}

    def close(self) -> None:
        for cache in self._requests.values():
            cache.clear()
