"""The benchmarked deployment paths (backends) and what each one needs.

Imports nothing heavy: the parent process plans with it, the worker builds the
runner named here (``benchmarks.runners``).
"""

from dataclasses import dataclass
from typing import Dict, List, Optional


@dataclass(frozen=True)
class BackendSpec:
    """One deployment path.

    Attributes:
        name: Identifier on the command line and in ``results.json``.
        label: What a reader sees in the report.
        device: ``cpu`` or ``cuda``.
        precision: ``fp32``, ``fp16`` or ``bf16`` (of the arithmetic); ``best``: the runtime's
            own choice on this machine, which the worker reports.
        family: ``torch`` (needs the checkpoint), ``onnx``, ``openvino``, ``runtime`` or ``cpp``
            (the C++ runtime's C API, ``make cpp``) (need the bundle).
        tiled: Runs the runtime's tiles (its memory does not grow with the activations
            of the whole image).
        large: Also measured at sizes above ``LARGE_MPIX`` (tiled paths, their
            whole-image twins and the baseline).
        baseline: The PyTorch eager FP32 path every ratio on this device refers to.
        compiles: Pays a compile on each new shape (reported separately).
        self_ensemble: Passes the runtime averages (``Deblurrer(self_ensemble=...)``).
    """

    name: str
    label: str
    device: str
    precision: str
    family: str
    tiled: bool = False
    large: bool = False
    baseline: bool = False
    compiles: bool = False
    self_ensemble: int = 1


#: Sizes above this many megapixels run only the backends marked ``large``.
LARGE_MPIX = 4.0
#: Sizes above this many megapixels (the 24 MP photo) run only the tiled backends.
PHOTO_MPIX = 10.0

SPECS: List[BackendSpec] = [
    BackendSpec(
        "torch-eager", "PyTorch eager FP32 (NCHW)", "cpu", "fp32", "torch", large=True, baseline=True
    ),
    BackendSpec("torch-eager-cl", "PyTorch eager FP32 (channels_last)", "cpu", "fp32", "torch"),
    BackendSpec(
        "torch-compile", "torch.compile inductor FP32 (channels_last)", "cpu", "fp32", "torch", compiles=True
    ),
    BackendSpec(
        "torch-compile-bf16",
        "torch.compile inductor, bf16 autocast (channels_last)",
        "cpu",
        "bf16",
        "torch",
        compiles=True,
    ),
    BackendSpec("ort-fp32", "ONNX Runtime CPU FP32", "cpu", "fp32", "onnx"),
    BackendSpec("ort-fp16", "ONNX Runtime CPU, FP16 graph", "cpu", "fp16", "onnx"),
    BackendSpec("openvino-fp32", "OpenVINO CPU FP32 (whole image)", "cpu", "fp32", "openvino"),
    BackendSpec("openvino-bf16", "OpenVINO CPU BF16 (whole image)", "cpu", "bf16", "openvino"),
    BackendSpec(
        "runtime",
        "runtime Deblurrer (default: auto backend and precision, tiled 1024)",
        "cpu",
        "best",
        "runtime",
        tiled=True,
        large=True,
    ),
    BackendSpec(
        "runtime-whole", "runtime Deblurrer, whole image (one tile)", "cpu", "best", "runtime", large=True
    ),
    BackendSpec(
        "runtime-ort",
        "runtime Deblurrer on ONNX Runtime FP32 (tiled 1024)",
        "cpu",
        "fp32",
        "runtime",
        tiled=True,
    ),
    BackendSpec(
        "runtime-x2",
        "runtime Deblurrer, self-ensemble of 2 passes (tiled 1024)",
        "cpu",
        "best",
        "runtime",
        tiled=True,
        self_ensemble=2,
    ),
    BackendSpec(
        "runtime-x8",
        "runtime Deblurrer, self-ensemble of 8 passes (tiled 1024)",
        "cpu",
        "best",
        "runtime",
        tiled=True,
        self_ensemble=8,
    ),
    BackendSpec(
        "cpp-ort", "C++ runtime through its C API (ORT CPU, tiled 1024)", "cpu", "fp32", "cpp", tiled=True
    ),
    BackendSpec(
        "torch-cuda-fp32", "PyTorch CUDA FP32 (TF32 off)", "cuda", "fp32", "torch", large=True, baseline=True
    ),
    BackendSpec(
        "torch-cuda-fp16", "PyTorch CUDA FP16 autocast (channels_last)", "cuda", "fp16", "torch", large=True
    ),
    BackendSpec("ort-cuda-fp32", "ONNX Runtime CUDA FP32", "cuda", "fp32", "onnx"),
    BackendSpec("ort-cuda-fp16", "ONNX Runtime CUDA, FP16 graph", "cuda", "fp16", "onnx"),
    BackendSpec(
        "runtime-cuda",
        "runtime Deblurrer on CUDA (auto backend, FP16, tiled 512)",
        "cuda",
        "fp16",
        "runtime",
        tiled=True,
        large=True,
    ),
    BackendSpec(
        "runtime-trt-fp16",
        "runtime Deblurrer, TensorRT FP16 engine (tiled 512)",
        "cuda",
        "fp16",
        "runtime",
        tiled=True,
        large=True,
    ),
    # Last on its device: its compiles are the first thing a tight budget cuts.
    BackendSpec(
        "torch-cuda-compile",
        "torch.compile CUDA FP16 autocast (channels_last)",
        "cuda",
        "fp16",
        "torch",
        compiles=True,
    ),
]
BY_NAME: Dict[str, BackendSpec] = {s.name: s for s in SPECS}
#: The tiled path whose overhead is measured against each whole-image twin.
TILED_TWINS = {"runtime": "runtime-whole"}


def baseline_for(device: str) -> BackendSpec:
    """The PyTorch eager FP32 backend of ``device``."""
    return next(s for s in SPECS if s.baseline and s.device == device)


def select(names: Optional[List[str]], devices: List[str], compile_: bool = True) -> List[BackendSpec]:
    """Backends to run, in report order: per device (cpu first), the baseline first.

    Args:
        names: Backend names (whatever their device), or None for every backend of ``devices``.
        devices: ``cpu`` and/or ``cuda``, used when ``names`` is None.
        compile_: Keep the ``torch.compile`` backends.

    Raises:
        ValueError: An unknown backend name (one line, listing the known ones).
    """
    if names is not None:
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            raise ValueError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)}")
    chosen = [
        s
        for s in SPECS
        if (s.name in names if names is not None else s.device in devices) and (compile_ or not s.compiles)
    ]
    return sorted(chosen, key=lambda s: (s.device != "cpu", not s.baseline))
