"""The backend interface, the ``auto`` choice (TensorRT on a GPU, OpenVINO on the CPU,
ONNX Runtime where neither can run) and the default precision (``default_precision``)."""

import importlib
import logging
from abc import ABC, abstractmethod
from typing import Any, Dict, Optional

from runtime.bundle import Bundle, check_engine_entry
from runtime.errors import BackendError, BundleError
from runtime.gpu import gpu_info, import_tensorrt

log = logging.getLogger("runtime")

BACKENDS = ("auto", "tensorrt", "onnxruntime", "onnxruntime-trt", "openvino")
DEVICES = ("auto", "cpu", "cuda")


class Backend(ABC):
    """Runs the bundle's graphs.

    ``run`` takes and returns host (NumPy) arrays on every backend; GPU backends
    (``device_io`` True) also take and return CuPy arrays, which never leave the GPU.
    A backend is a context manager: ``with create_backend(...) as backend:`` closes it.

    Attributes:
        name: ``onnxruntime``, ``tensorrt`` or ``openvino``.
        device: ``cpu`` or ``cuda``.
        precision: ``fp32``, ``fp16`` or (OpenVINO) ``bf16``.
        profile: ``{"min"|"opt"|"max": [N, H, W]}`` that inputs must respect, or None.
    """

    name = ""

    def __init__(self, bundle: Bundle, device: str, precision: str):
        self.bundle = bundle
        self.device = device
        self.precision = precision
        self.profile: Optional[dict] = None

    @property
    def device_io(self) -> bool:
        return self.device == "cuda"

    @abstractmethod
    def run(self, graph: str, inputs: Dict[str, Any]) -> Dict[str, Any]:
        """Run one graph.

        Args:
            graph: ``estimate``, ``condition`` or ``restore``.
            inputs: Input name -> float32 array, NCHW (``cond_mean``: N x Cc).

        Returns:
            Output name -> array, on the same side (host / GPU) as the inputs.
        """

    def describe(self) -> str:
        return f"{self.name} on {self.device}, {self.precision}"

    def close(self) -> None:
        """Release what the backend holds. TensorRT's device and pinned buffers, stream and
        CUDA graphs are freed here only, not at garbage collection; ONNX Runtime sessions
        go with the object. Closing twice is harmless."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def tensorrt_unusable(bundle: Bundle, precision: str) -> Optional[str]:
    """Why TensorRT cannot run this bundle here, or None when it can."""
    trt = import_tensorrt()
    if trt is None:
        return "tensorrt is not installed"
    gpu = gpu_info()
    if gpu is None:
        return "no CUDA GPU (or cuda-python) found"
    entry = bundle.engines.get(precision)
    if entry is None:
        return f"the bundle has no {precision} engine (has: {', '.join(bundle.engines) or 'none'})"
    try:
        check_engine_entry(entry, bundle.graph_sha256(precision), trt.__version__, gpu, str(bundle.root))
    except BundleError as err:
        return str(err)
    return None


def openvino_missing() -> Optional[str]:
    """Why the OpenVINO backend cannot be imported here, or None when it can."""
    try:
        importlib.import_module("runtime.openvino_backend")
    except ImportError as err:
        return f"openvino is not installed ({err})"
    return None


def _ort_cuda_available() -> bool:
    import onnxruntime as ort  # type: ignore[import-untyped, unused-ignore]

    return "CUDAExecutionProvider" in ort.get_available_providers()


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    found = gpu_info() is not None or _ort_cuda_available()
    log.info("device auto: %s", "cuda (a GPU is visible)" if found else "cpu (no GPU visible)")
    return "cuda" if found else "cpu"


def create_backend(
    bundle: Bundle,
    backend: str = "auto",
    device: str = "cpu",
    precision: Optional[str] = None,
    threads: Optional[int] = None,
    cuda_graphs: bool = False,
) -> Backend:
    """Build the backend that runs ``bundle``, logging what was picked and why.

    ``auto`` on ``cuda`` picks TensorRT where ``tensorrt`` imports, a GPU is present
    and the bundle has an engine for ``precision`` that fits this GPU and TensorRT;
    otherwise ONNX Runtime with the CUDA provider if available, else the CPU.
    ``auto`` on ``cpu`` picks OpenVINO where it is installed (unless ``precision`` is
    fp16, which runs the FP16 graph on ONNX Runtime), else ONNX Runtime.

    Args:
        bundle: The loaded bundle.
        backend: One of ``BACKENDS``. Default: ``auto``.
        device: ``auto``, ``cpu`` or ``cuda``. Default: ``cpu``.
        precision: ``fp32``, ``fp16``, ``bf16`` (OpenVINO), or None: ``default_precision``
            (fp16 where a TensorRT engine fits, else the backend's best). Default: None.
        threads: CPU threads of ONNX Runtime / OpenVINO (None: all cores).
        cuda_graphs: TensorRT only: capture one CUDA graph per input shape.

    Raises:
        BackendError, BundleError: The requested backend cannot run here.
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise BackendError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    # An explicit GPU request is refused where it cannot be met, as TensorRT's is.
    strict = device == "cuda" or backend == "onnxruntime-trt"
    device = _resolve_device(device)
    precision = default_precision(bundle, backend, device, precision)
    if backend == "auto":
        backend = _auto_backend(bundle, device, precision)
        precision = default_precision(bundle, backend, device, precision)
    if backend == "openvino":
        chosen: Backend = _openvino(bundle, device, precision, threads)
    elif backend == "tensorrt":
        if device != "cuda":
            raise BackendError(
                "the TensorRT backend needs a CUDA GPU, and the device is cpu "
                "(--device cpu, or auto found no GPU)"
            )
        assert precision is not None
        reason = tensorrt_unusable(bundle, precision)
        if reason is not None:
            raise BackendError(f"cannot use TensorRT: {reason}")
        from runtime.trt_backend import TrtBackend

        chosen = TrtBackend(bundle, precision, cuda_graphs=cuda_graphs)
    else:
        if precision == "bf16":
            raise BackendError("bf16 runs on the OpenVINO backend only (--backend openvino)")
        from runtime.ort_backend import OrtBackend

        provider = "tensorrt" if backend == "onnxruntime-trt" else device
        chosen = OrtBackend(bundle, precision or "fp32", provider=provider, threads=threads, strict=strict)
    log.info("backend: %s", chosen.describe())
    return chosen


def default_precision(bundle: Bundle, backend: str, device: str, precision: Optional[str]) -> Optional[str]:
    """The precision to run: ``precision`` where given; else fp16 where a TensorRT engine
    fits, else the backend's best.

    On ``cuda`` with ``backend`` ``auto`` or ``tensorrt``: the first of fp16, fp32 whose
    TensorRT engine fits this GPU and TensorRT. Otherwise ``auto`` stays None (decided
    once a backend is picked), OpenVINO None (its CPU's best: bf16 where the CPU has
    it), TensorRT fp16 (whose refusal then says why), ONNX Runtime fp32 (fastest on the
    CPU, the reference on CUDA).

    Args:
        bundle: The loaded bundle.
        backend: One of ``BACKENDS``.
        device: ``cpu`` or ``cuda`` (resolved, not ``auto``).
        precision: The requested precision, or None.
    """
    if precision is not None:
        return precision
    if device == "cuda" and backend in ("auto", "tensorrt"):
        for candidate in ("fp16", "fp32"):
            if tensorrt_unusable(bundle, candidate) is None:
                return candidate
    if backend in ("auto", "openvino"):
        return None
    return "fp16" if backend == "tensorrt" else "fp32"


def _openvino(bundle: Bundle, device: str, precision: Optional[str], threads: Optional[int]) -> Backend:
    if device != "cpu":
        raise BackendError("the OpenVINO backend runs on the CPU, and the device is cuda (use --device cpu)")
    missing = openvino_missing()
    if missing is not None:
        raise BackendError(
            f"cannot use OpenVINO: {missing}; install it with `pip install openvino` "
            "or use --backend onnxruntime"
        )
    from runtime.openvino_backend import OpenVinoBackend

    return OpenVinoBackend(bundle, precision, threads=threads)


def _auto_backend(bundle: Bundle, device: str, precision: Optional[str]) -> str:
    if device == "cpu":
        if precision == "fp16":
            log.info("backend auto: onnxruntime (fp16 runs the FP16 graph on ONNX Runtime)")
            return "onnxruntime"
        missing = openvino_missing()
        if missing is None:
            log.info("backend auto: openvino (installed; the fastest CPU backend)")
            return "openvino"
        log.info("backend auto: onnxruntime, not openvino: %s", missing)
        return "onnxruntime"
    reason = tensorrt_unusable(bundle, precision or "fp32")
    if reason is None:
        log.info("backend auto: tensorrt (engine matches this GPU and TensorRT)")
        return "tensorrt"
    log.info("backend auto: onnxruntime, not tensorrt: %s", reason)
    return "onnxruntime"
