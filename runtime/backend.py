"""The backend interface and the ``auto`` choice between TensorRT and ONNX Runtime."""
import logging
from abc import ABC, abstractmethod
from typing import Any, Dict, Optional

from runtime.bundle import Bundle, check_engine_entry
from runtime.errors import BackendError, BundleError
from runtime.gpu import gpu_info, import_tensorrt

log = logging.getLogger("runtime")

BACKENDS = ("auto", "tensorrt", "onnxruntime", "onnxruntime-trt")
DEVICES = ("auto", "cpu", "cuda")


class Backend(ABC):
    """Runs the bundle's graphs.

    ``run`` takes and returns host (NumPy) arrays on every backend; GPU backends
    (``device_io`` True) also take and return CuPy arrays, which never leave the GPU.

    Attributes:
        name: ``onnxruntime`` or ``tensorrt``.
        device: ``cpu`` or ``cuda``.
        precision: ``fp32`` or ``fp16``.
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
        """Release device memory and sessions (also done at garbage collection)."""


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


def _ort_cuda_available() -> bool:
    import onnxruntime as ort  # type: ignore[import-untyped, unused-ignore]
    return "CUDAExecutionProvider" in ort.get_available_providers()


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    found = gpu_info() is not None or _ort_cuda_available()
    log.info("device auto: %s", "cuda (a GPU is visible)" if found else "cpu (no GPU visible)")
    return "cuda" if found else "cpu"


def create_backend(bundle: Bundle, backend: str = "auto", device: str = "cpu", precision: str = "fp32",
                   threads: Optional[int] = None, cuda_graphs: bool = False) -> Backend:
    """Build the backend that runs ``bundle``, logging what was picked and why.

    ``auto`` on ``cuda`` picks TensorRT where ``tensorrt`` imports, a GPU is present
    and the bundle has an engine for ``precision`` that fits this GPU and TensorRT;
    otherwise ONNX Runtime with the CUDA provider if available, else the CPU.
    ``auto`` on ``cpu`` is ONNX Runtime on the CPU.

    Args:
        bundle: The loaded bundle.
        backend: One of ``BACKENDS``. Default: ``auto``.
        device: ``auto``, ``cpu`` or ``cuda``. Default: ``cpu``.
        precision: ``fp32`` or ``fp16``. Default: ``fp32``.
        threads: ONNX Runtime intra-op threads (None: all cores).
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
    if backend == "auto":
        backend = _auto_backend(bundle, device, precision)
    if backend == "tensorrt":
        if device != "cuda":
            raise BackendError("the TensorRT backend needs a CUDA GPU, and the device is cpu "
                               "(--device cpu, or auto found no GPU)")
        reason = tensorrt_unusable(bundle, precision)
        if reason is not None:
            raise BackendError(f"cannot use TensorRT: {reason}")
        from runtime.trt_backend import TrtBackend
        chosen: Backend = TrtBackend(bundle, precision, cuda_graphs=cuda_graphs)
    else:
        from runtime.ort_backend import OrtBackend
        provider = "tensorrt" if backend == "onnxruntime-trt" else device
        chosen = OrtBackend(bundle, precision, provider=provider, threads=threads, strict=strict)
    log.info("backend: %s", chosen.describe())
    return chosen


def _auto_backend(bundle: Bundle, device: str, precision: str) -> str:
    if device == "cpu":
        log.info("backend auto: onnxruntime (device cpu)")
        return "onnxruntime"
    reason = tensorrt_unusable(bundle, precision)
    if reason is None:
        log.info("backend auto: tensorrt (engine matches this GPU and TensorRT)")
        return "tensorrt"
    log.info("backend auto: onnxruntime, not tensorrt: %s", reason)
    return "onnxruntime"
