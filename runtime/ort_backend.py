"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers.

Host (NumPy) inputs go through ``InferenceSession.run``; GPU (CuPy) inputs through
IO binding with device pointers, so their data never visits the host.
"""

import logging
from typing import Any, Dict, List, Optional, Union

import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped, unused-ignore]

from runtime import validate
from runtime.backend import Backend
from runtime.bundle import Bundle
from runtime.device_arrays import cupy_module, is_device_array, to_cupy
from runtime.errors import BackendError

log = logging.getLogger("runtime")

_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def provider_list(provider: str, device_id: int = 0) -> List[Union[str, tuple]]:
    """Execution providers to ask for, best first, the CPU always last.

    Args:
        provider: ``cpu``, ``cuda`` or ``tensorrt`` (TensorRT EP, then CUDA EP).
    """
    if provider not in _PROVIDERS:
        raise BackendError(
            f"unknown ONNX Runtime provider {provider!r}; choose one of {', '.join(_PROVIDERS)}"
        )
    chain: List[Union[str, tuple]] = []
    if provider == "tensorrt":
        chain.append(("TensorrtExecutionProvider", {"device_id": device_id}))
    if provider in ("tensorrt", "cuda"):
        chain.append(("CUDAExecutionProvider", {"device_id": device_id}))
    chain.append("CPUExecutionProvider")
    return chain


class OrtBackend(Backend):
    """ONNX Runtime sessions for the bundle's graphs.

    Args:
        bundle: The loaded bundle.
        precision: ``fp32`` or ``fp16`` (the FP16 ONNX keeps float32 I/O).
        provider: ``cpu``, ``cuda`` or ``tensorrt``. Default: ``cpu``.
        threads: Intra-op threads; None lets ONNX Runtime use all cores.
        device_id: CUDA device. Default: 0.
        strict: Refuse (``BackendError``) instead of falling back to the CPU with a
            warning when ``provider`` is not usable here. Default: False.
    """

    name = "onnxruntime"

    def __init__(
        self,
        bundle: Bundle,
        precision: str = "fp32",
        provider: str = "cpu",
        threads: Optional[int] = None,
        device_id: int = 0,
        strict: bool = False,
    ):
        super().__init__(bundle, "cpu" if provider == "cpu" else "cuda", precision)
        self.provider = provider
        self.device_id = device_id
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Tiles of varying shapes make the CPU arena keep the largest of every
        # buffer: without it, peak RSS per megapixel halves at the same speed.
        options.enable_cpu_mem_arena = False
        validate.check_threads(threads)
        if threads is not None:
            options.intra_op_num_threads = threads
        # Providers this onnxruntime build lacks are not asked for: ONNX Runtime would warn
        # about each (a UserWarning and C++ log lines) before the one warning below.
        available = ort.get_available_providers()
        if strict and _PROVIDERS[provider] not in available:
            raise BackendError(
                f"ONNX Runtime has no {_PROVIDERS[provider]} here (available: "
                f"{', '.join(available)}): use --device cpu or auto"
            )
        wanted = [
            p for p in provider_list(provider, device_id) if (p if isinstance(p, str) else p[0]) in available
        ]
        self.sessions = {name: self._session(bundle, name, options, wanted) for name in bundle.graphs}
        active = self.sessions["restore"].get_providers()
        if _PROVIDERS[provider] not in active:
            if strict:
                raise BackendError(
                    f"ONNX Runtime cannot use {_PROVIDERS[provider]} here (no usable "
                    "GPU?): use --device cpu or auto"
                )
            log.warning(
                "ONNX Runtime fell back to %s: %s is not usable here (available: %s)",
                ", ".join(active),
                _PROVIDERS[provider],
                ", ".join(available),
            )
            self.device = "cpu"
        self.active_providers = active

    def _session(
        self, bundle: Bundle, name: str, options: ort.SessionOptions, providers: list
    ) -> ort.InferenceSession:
        path = bundle.onnx_path(name, self.precision)
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise BackendError(f"ONNX Runtime cannot load {path}: {first}") from None
        expected = [t.name for t in bundle.graphs[name].inputs]
        found = [i.name for i in session.get_inputs()]
        if found != expected:
            raise BackendError(f"{path.name}: inputs {found} differ from the manifest's {expected}")
        return session

    def describe(self) -> str:
        return f"onnxruntime ({', '.join(self.active_providers)}), {self.precision}"

    def run(self, graph: str, inputs: Dict[str, Any]) -> Dict[str, Any]:
        if any(is_device_array(v) for v in inputs.values()):
            if self.device != "cuda":
                raise BackendError(
                    "GPU arrays need a GPU backend: use device cuda (TensorRT or ONNX Runtime with CUDA)"
                )
            return self._run_bound(graph, {k: to_cupy(v) for k, v in inputs.items()})
        session = self.sessions[graph]
        feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()}
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))

    def _run_bound(self, graph: str, inputs: Dict[str, Any]) -> Dict[str, Any]:
        """IO binding on device pointers: outputs are CuPy arrays allocated here."""
        cupy = cupy_module()
        session, entry = self.sessions[graph], self.bundle.graphs[graph]
        binding = session.io_binding()
        inputs = {k: cupy.ascontiguousarray(v, dtype=cupy.float32) for k, v in inputs.items()}
        for name, value in inputs.items():
            binding.bind_input(name, "cuda", self.device_id, np.float32, tuple(value.shape), value.data.ptr)
        shapes = {k: v.shape for k, v in inputs.items()}
        outputs = {}
        for spec in entry.outputs:
            out = cupy.empty(entry.output_shape(spec.name, shapes), dtype=cupy.float32)
            binding.bind_output(spec.name, "cuda", self.device_id, np.float32, tuple(out.shape), out.data.ptr)
            outputs[spec.name] = out
        # Inputs may come from work queued on CuPy's stream; ORT runs on its own.
        cupy.cuda.get_current_stream().synchronize()
        session.run_with_iobinding(binding)
        return outputs
