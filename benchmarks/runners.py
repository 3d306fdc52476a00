"""Runners: one callable per backend, numpy (H, W, 3) float32 [0, 1] in -> same out.

Every latency in the report is this end-to-end call: layout conversion, host <->
device copies, tiling and the clip to [0, 1] are all inside it, as a user pays them.
Heavy libraries are imported inside the runner that needs them, so each worker
process loads only its own backend's.
"""

from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from benchmarks.backends import BackendSpec
from benchmarks.memory import cuda_used_bytes
from common.cpu import BF16_CPU_FLAGS, cpu_flags, cpu_has_bf16
from runtime.deblurrer import CPU_TILING

#: Tile of the runtime's default (tiled) path on the CPU, where the targets are judged.
DEFAULT_TILE = CPU_TILING[0]
#: The whole-image path's single tile is never smaller (the runtime refuses tiles
#: below its overlap).
WHOLE_MIN_TILE = 512


class Unavailable(RuntimeError):
    """The backend cannot run on this machine (missing library, provider, GPU or engine)."""


class Runner:
    """Base class: ``prepare(size)`` before a size's runs, then ``__call__`` per run.

    Attributes:
        description: What actually ran (provider, device), for the report.
        precision: The arithmetic that ran, where the runner decides it (the runtime's
            ``best``), else None: the spec's.
    """

    description = ""
    precision: Optional[str] = None

    def prepare(self, height: int, width: int) -> None:
        """Per-size setup (the whole-image runtime sizes its single tile here)."""

    def __call__(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def reset_device_peak(self) -> None:
        """Start a new device-memory peak (GPU runners)."""

    def device_peak_bytes(self) -> Optional[int]:
        """Peak device memory since ``reset_device_peak``; None on the CPU."""
        return None


class TorchRunner(Runner):
    """A PyTorch model from a checkpoint, eager or ``torch.compile``-d.

    Args:
        spec: The backend (device, precision, compile).
        checkpoint: Checkpoint folder.
        threads: ``torch.set_num_threads``.
    """

    def __init__(self, spec: BackendSpec, checkpoint: Path, threads: int):
        import torch

        from training.checkpoint import load_checkpoint

        torch.set_num_threads(threads)
        if spec.device == "cuda":
            if not torch.cuda.is_available():
                raise Unavailable(f"torch {torch.__version__} sees no CUDA GPU")
            # True FP32: the FP32 reference must not be TF32.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        if spec.precision == "bf16" and not cpu_has_bf16(cpu_flags()):
            raise Unavailable(
                f"this CPU has none of {', '.join(BF16_CPU_FLAGS)}: bf16 autocast "
                "would be emulated, slower than FP32"
            )
        self.torch = torch
        self.device = torch.device(spec.device)
        self.channels_last = spec.name.endswith("-cl") or spec.compiles or spec.precision != "fp32"
        self.format = torch.channels_last if self.channels_last else torch.contiguous_format
        model, _ = load_checkpoint(checkpoint)
        model = model.to(self.device, memory_format=self.format).eval()
        self.model = torch.compile(model, dynamic=False) if spec.compiles else model
        self.autocast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(spec.precision)
        self.description = (
            f"torch {torch.__version__} on {spec.device}"
            f"{' (' + torch.cuda.get_device_name() + ')' if spec.device == 'cuda' else ''}, "
            f"{'channels_last' if self.channels_last else 'NCHW'}"
            f"{', autocast ' + spec.precision if self.autocast else ''}"
            f"{', inductor' if spec.compiles else ''}, {threads} threads"
        )

    def __call__(self, image: np.ndarray) -> np.ndarray:
        torch = self.torch
        x = torch.from_numpy(image).permute(2, 0, 1)[None]
        x = x.to(self.device).contiguous(memory_format=self.format)
        with (
            torch.no_grad(),
            torch.autocast(
                self.device.type, self.autocast or torch.float16, enabled=self.autocast is not None
            ),
        ):
            out, _ = self.model(x)
        out = out[0].float().clamp_(0.0, 1.0).permute(1, 2, 0).cpu()
        return np.ascontiguousarray(out.numpy())

    def reset_device_peak(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()

    def device_peak_bytes(self) -> Optional[int]:
        if self.device.type != "cuda":
            return None
        return int(self.torch.cuda.max_memory_allocated())


def _cuda_peak_sampler() -> Tuple:
    """(reset, read) of a device-memory peak sampled after each call (non-torch GPU runners)."""
    state = {"peak": 0}

    def reset() -> None:
        state["peak"] = cuda_used_bytes() or 0

    def sample() -> Optional[int]:
        used = cuda_used_bytes()
        if used is not None:
            state["peak"] = max(state["peak"], used)
        return state["peak"] or None

    return reset, sample


class OrtRunner(Runner):
    """The bundle's graphs in plain ONNX Runtime sessions, whole image, no tiling.

    Args:
        spec: The backend (device, precision).
        bundle: Bundle folder.
        threads: ``intra_op_num_threads`` (inter-op: 1).
    """

    def __init__(self, spec: BackendSpec, bundle: Path, threads: int):
        import onnxruntime as ort

        from runtime.bundle import load_bundle

        provider = "CUDAExecutionProvider" if spec.device == "cuda" else "CPUExecutionProvider"
        if provider not in ort.get_available_providers():
            raise Unavailable(
                f"onnxruntime {ort.__version__} has no {provider} (has: "
                f"{', '.join(ort.get_available_providers())})"
            )
        loaded = load_bundle(bundle, verify=False)
        if spec.precision not in loaded.precisions():
            raise Unavailable(f"the bundle has no {spec.precision} ONNX graphs")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.sessions = {
            name: ort.InferenceSession(
                str(loaded.onnx_path(name, spec.precision)), options, providers=[provider]
            )
            for name in loaded.graphs
        }
        active = self.sessions["restore"].get_providers()
        if provider not in active:
            raise Unavailable(f"onnxruntime fell back to {', '.join(active)}")
        self.on_cuda = spec.device == "cuda"
        self._reset, self._sample = _cuda_peak_sampler()
        self.description = f"onnxruntime {ort.__version__}, {provider}, {threads} intra-op threads"

    def __call__(self, image: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(image.transpose(2, 0, 1)[None])
        dmap = self.sessions["estimate"].run(None, {"image": x})[0]
        feeds = {"image": x, "defocus_map": dmap}
        if "condition" in self.sessions:
            feeds["cond_mean"] = self.sessions["condition"].run(None, {"defocus_map": dmap})[0]
        out = self.sessions["restore"].run(None, feeds)[0]
        if self.on_cuda:
            self._sample()
        return np.ascontiguousarray(np.clip(out[0].transpose(1, 2, 0), 0.0, 1.0))

    def reset_device_peak(self) -> None:
        if self.on_cuda:
            self._reset()

    def device_peak_bytes(self) -> Optional[int]:
        return self._sample() if self.on_cuda else None


class OpenVinoRunner(Runner):
    """The bundle's graphs compiled by OpenVINO for the whole image, no tiling.

    Args:
        spec: The backend (``fp32`` or ``bf16``).
        bundle: Bundle folder.
        threads: ``INFERENCE_NUM_THREADS``.
    """

    def __init__(self, spec: BackendSpec, bundle: Path, threads: int):
        from runtime import load_bundle
        from runtime.backend import openvino_missing
        from runtime.errors import BackendError

        missing = openvino_missing()
        if missing is not None:
            raise Unavailable(missing)
        from runtime.openvino_backend import OpenVinoBackend

        try:
            self.backend = OpenVinoBackend(load_bundle(bundle, verify=False), spec.precision, threads)
        except BackendError as err:  # BF16 on a CPU without it
            raise Unavailable(str(err)) from None
        self.description = f"{self.backend.describe()}, {threads} threads, whole image"

    def __call__(self, image: np.ndarray) -> np.ndarray:
        run = self.backend.run
        x = np.ascontiguousarray(image.transpose(2, 0, 1)[None])
        dmap = run("estimate", {"image": x})["defocus_map"]
        feeds = {"image": x, "defocus_map": dmap}
        if "condition" in self.backend.models:
            feeds["cond_mean"] = run("condition", {"defocus_map": dmap})["cond_mean"]
        out = run("restore", feeds)["deblurred"]
        return np.ascontiguousarray(np.clip(out[0].transpose(1, 2, 0), 0.0, 1.0))


class RuntimeRunner(Runner):
    """The runtime's ``Deblurrer``, tiled (default tile) or on one whole-image tile.

    Args:
        spec: The backend (``tiled``: default tile, else one tile per image).
        bundle: Bundle folder.
        threads: ONNX Runtime intra-op threads.
    """

    def __init__(self, spec: BackendSpec, bundle: Path, threads: int):
        from runtime import load_bundle
        from runtime.gpu import import_tensorrt

        self.spec, self.threads = spec, threads
        self.bundle = load_bundle(bundle, verify=False)
        self.backend = {"runtime-trt-fp16": "tensorrt", "runtime-ort": "onnxruntime"}.get(spec.name, "auto")
        if self.backend == "tensorrt":
            if import_tensorrt() is None:
                raise Unavailable("tensorrt is not installed")
            if spec.precision not in self.bundle.engines:
                raise Unavailable(
                    f"the bundle has no {spec.precision} TensorRT engine (build one with `make engine`)"
                )
        self.deblurrer = self._make(None)  # the whole-image path remakes it per size
        self.precision = self.deblurrer.backend.precision
        self._reset, self._sample = _cuda_peak_sampler()

    def _make(self, tile: Optional[int]):
        from runtime import Deblurrer

        precision = None if self.spec.precision == "best" else self.spec.precision
        deblurrer = Deblurrer(
            self.bundle,
            backend=self.backend,
            device=self.spec.device,
            precision=precision,
            tile=tile,
            threads=self.threads,
            self_ensemble=self.spec.self_ensemble,
        )
        if deblurrer.backend.device != self.spec.device:
            raise Unavailable(f"the runtime fell back to {deblurrer.describe()}")
        self.description = (
            f"{deblurrer.describe()}, tile {deblurrer.tile} x {deblurrer.tile_batch}, {self.threads} threads"
        )
        return deblurrer

    def prepare(self, height: int, width: int) -> None:
        if not self.spec.tiled:
            # One tile covers the image; never below the default tile, which the
            # runtime sizes above its overlap.
            m = self.bundle.size_multiple
            self.deblurrer = self._make(max(-(-max(height, width) // m) * m, WHOLE_MIN_TILE))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        out, _ = self.deblurrer.run(image)
        if self.spec.device == "cuda":
            self._sample()
        return out

    def reset_device_peak(self) -> None:
        if self.spec.device == "cuda":
            self._reset()

    def device_peak_bytes(self) -> Optional[int]:
        return self._sample() if self.spec.device == "cuda" else None


class CppRunner(Runner):
    """The C++ runtime (``cpp/``) through its C API, tiled like the default runtime path.

    Args:
        bundle: Bundle folder.
        threads: ONNX Runtime intra-op threads.
    """

    def __init__(self, bundle: Path, threads: int):
        from cpp.capi import LIBRARY, OK, CApi

        if not LIBRARY.is_file():
            raise Unavailable(f"{LIBRARY} is not built (run `make cpp`)")
        self.api = CApi(LIBRARY)
        status, self.handle = self.api.create(bundle, tile=DEFAULT_TILE, threads=threads)
        if status != OK:
            raise Unavailable(f"the C API refused the bundle: {self.api.error()}")
        self.ok = OK
        self.description = self.api.describe(self.handle)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        status, out, _ = self.api.run(self.handle, image)
        if status != self.ok:
            raise RuntimeError(self.api.error())
        return out


def precheck(spec: BackendSpec) -> Optional[str]:
    """Why a bundle backend surely cannot run here (no CUDA provider, no TensorRT), else None.

    Cheap (no session, no GPU work): the parent uses it to skip workers, and the
    bundle export when no backend needs it. The worker's own checks stay the authority.
    """
    if spec.family == "openvino":
        from runtime.backend import openvino_missing

        return openvino_missing()
    if spec.family == "torch" or spec.device == "cpu":
        return None
    try:
        import onnxruntime as ort

        cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        cuda_ep = False
    from runtime.gpu import import_tensorrt

    trt = import_tensorrt() is not None
    if spec.family == "onnx" and not cuda_ep:
        return "onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu is not installed)"
    if spec.family == "runtime" and "trt" in spec.name and not trt:
        return "tensorrt is not installed"
    if spec.family == "runtime" and not (trt or cuda_ep):
        return "neither tensorrt nor onnxruntime's CUDAExecutionProvider is installed"
    return None


def make_runner(
    spec: BackendSpec, checkpoint: Optional[Path], bundle: Optional[Path], threads: int
) -> Runner:
    """Build the runner of ``spec``.

    Raises:
        Unavailable: The backend cannot run here (the report lists it as skipped).
    """
    if spec.family == "torch":
        if checkpoint is None:
            raise Unavailable("no checkpoint to load the PyTorch model from")
        return TorchRunner(spec, checkpoint, threads)
    if bundle is None:
        raise Unavailable("no ONNX bundle (its export failed or was not asked for)")
    if spec.family == "onnx":
        return OrtRunner(spec, bundle, threads)
    if spec.family == "openvino":
        return OpenVinoRunner(spec, bundle, threads)
    if spec.family == "cpp":
        return CppRunner(bundle, threads)
    return RuntimeRunner(spec, bundle, threads)
