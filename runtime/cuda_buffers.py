"""CUDA memory, streams and graphs through cuda-python (``cuda.bindings.runtime``).

Every ``cudart`` call returns a tuple whose first item is a ``cudaError_t``; each one
goes through ``check`` which raises ``CudaError`` with ``cudaGetErrorName``.
Buffer sizing (``nbytes``, ``plan_buffers``) is plain arithmetic and needs no GPU.

Self-check on a GPU machine (no TensorRT needed)::

    python -m runtime.cuda_buffers --selftest [--megabytes 64]
"""

import argparse
import ctypes
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from cuda.bindings import runtime as cudart  # type: ignore[import-untyped, unused-ignore]

from runtime.errors import BackendError
from runtime.gpu import cuda_gpus


class CudaError(BackendError):
    """A CUDA runtime call failed."""


def check(result: Any, call: str = "CUDA call") -> Any:
    """Unpack a ``cudart`` result tuple, raising ``CudaError`` on failure.

    Returns:
        None for calls that return only the error, the single value, or a tuple of values.
    """
    err, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if err != cudart.cudaError_t.cudaSuccess:
        name_err, name = cudart.cudaGetErrorName(err)
        label = name.decode() if name_err == cudart.cudaError_t.cudaSuccess else str(err)
        raise CudaError(f"{call} failed: {label}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def nbytes(shape: Sequence[int], dtype: Any) -> int:
    """Bytes of a dense tensor: prod(shape) x itemsize."""
    if any(int(d) < 0 for d in shape):
        raise ValueError(f"shape {tuple(shape)} has a dynamic (-1) dimension; resolve it first")
    return int(np.prod([int(d) for d in shape], dtype=np.int64)) * np.dtype(dtype).itemsize


def plan_buffers(tensors: Mapping[str, Tuple[Sequence[int], Any]]) -> Dict[str, int]:
    """Tensor name -> bytes to allocate, given each tensor's largest shape and dtype."""
    return {name: nbytes(shape, dtype) for name, (shape, dtype) in tensors.items()}


def device_count() -> int:
    """Visible CUDA devices; 0 where there is no driver or no GPU."""
    err, count = cudart.cudaGetDeviceCount()
    return int(count) if err == cudart.cudaError_t.cudaSuccess else 0


class Stream:
    """One CUDA stream (``cudaStreamCreate``), destroyed by ``close``."""

    def __init__(self) -> None:
        self.handle: Any = check(cudart.cudaStreamCreate(), "cudaStreamCreate")

    @property
    def ptr(self) -> int:
        """The raw ``cudaStream_t`` for ``execute_async_v3``."""
        return int(self.handle)

    def synchronize(self) -> None:
        check(cudart.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.handle is not None:
            check(cudart.cudaStreamDestroy(self.handle), "cudaStreamDestroy")
            self.handle = None


class DeviceBuffer:
    """``size`` bytes of device memory (``cudaMalloc``)."""

    def __init__(self, size: int):
        self.size = size
        self.ptr: int = int(check(cudart.cudaMalloc(max(size, 1)), "cudaMalloc"))

    def free(self) -> None:
        if self.ptr:
            check(cudart.cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


class PinnedBuffer:
    """``size`` bytes of page-locked host memory (``cudaMallocHost``) for async copies."""

    def __init__(self, size: int):
        self.size = size
        self.ptr: int = int(check(cudart.cudaMallocHost(max(size, 1)), "cudaMallocHost"))

    def array(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        """A NumPy view of the first ``nbytes(shape, dtype)`` bytes."""
        count = nbytes(shape, dtype)
        if count > self.size:
            raise ValueError(f"shape {tuple(shape)} needs {count} bytes, buffer holds {self.size}")
        raw = (ctypes.c_byte * count).from_address(self.ptr)
        return np.frombuffer(memoryview(raw), dtype=dtype).reshape(tuple(shape))

    def free(self) -> None:
        if self.ptr:
            check(cudart.cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0


def copy_async(dst: int, src: int, size: int, kind: Any, stream: Stream) -> None:
    """``cudaMemcpyAsync(dst, src, size, kind, stream)``; ``kind`` a ``cudaMemcpyKind``."""
    check(cudart.cudaMemcpyAsync(dst, src, size, kind, stream.handle), "cudaMemcpyAsync")


def htod_async(dst: DeviceBuffer, src: PinnedBuffer, size: int, stream: Stream) -> None:
    copy_async(dst.ptr, src.ptr, size, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)


def dtoh_async(dst: PinnedBuffer, src: DeviceBuffer, size: int, stream: Stream) -> None:
    copy_async(dst.ptr, src.ptr, size, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)


def dtod_async(dst: int, src: int, size: int, stream: Stream) -> None:
    copy_async(dst, src, size, cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream)


class CudaGraph:
    """Work captured once on a stream and replayed with ``cudaGraphLaunch``.

    The captured work must be enqueued once outside capture first (TensorRT
    allocates and sets up on its first enqueue), and the captured buffers must keep
    their addresses: one graph per fixed shape.

    Args:
        stream: A non-default stream.
        enqueue: Enqueues the work on ``stream``.
    """

    def __init__(self, stream: Stream, enqueue: Callable[[], None]):
        self.stream = stream
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check(cudart.cudaStreamBeginCapture(stream.handle, mode), "cudaStreamBeginCapture")
        try:
            enqueue()
        finally:
            graph = check(cudart.cudaStreamEndCapture(stream.handle), "cudaStreamEndCapture")
        self.graph: Any = graph
        self.exec: Any = check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def launch(self) -> None:
        check(cudart.cudaGraphLaunch(self.exec, self.stream.handle), "cudaGraphLaunch")

    def close(self) -> None:
        if self.exec is not None:
            check(cudart.cudaGraphExecDestroy(self.exec), "cudaGraphExecDestroy")
            check(cudart.cudaGraphDestroy(self.graph), "cudaGraphDestroy")
            self.exec = None


@dataclass
class SelftestResult:
    """Round-trip check of ``selftest``: sizes, exactness and copy rates."""

    device: str
    megabytes: float
    exact: bool
    graph_exact: bool
    htod_gbps: float
    dtoh_gbps: float


def selftest(megabytes: float = 64.0, repeats: int = 5) -> SelftestResult:
    """Copy random data host -> device -> device -> host through pinned buffers and a
    stream, compare, time it, then replay the device copy as a CUDA graph.

    Raises:
        CudaError: Without a GPU, or when any CUDA call fails.
    """
    if device_count() == 0:
        err, _ = cudart.cudaGetDeviceCount()
        raise CudaError(f"no CUDA device: cudaGetDeviceCount says {check_name(err)}")
    gpu = cuda_gpus()[0]
    size = int(megabytes * (1 << 20)) // 4 * 4
    data = np.random.default_rng(0).random(size // 4, dtype=np.float32)
    stream = Stream()
    host_in, host_out = PinnedBuffer(size), PinnedBuffer(size)
    dev_a, dev_b = DeviceBuffer(size), DeviceBuffer(size)
    try:
        host_in.array(data.shape, np.float32)[:] = data
        htod_gbps = _timed(lambda: htod_async(dev_a, host_in, size, stream), stream, size, repeats)
        dtod_async(dev_b.ptr, dev_a.ptr, size, stream)
        dtoh_gbps = _timed(lambda: dtoh_async(host_out, dev_b, size, stream), stream, size, repeats)
        exact = bool(np.array_equal(host_out.array(data.shape, np.float32), data))
        check(cudart.cudaMemsetAsync(dev_b.ptr, 0, size, stream.handle), "cudaMemsetAsync")
        graph = CudaGraph(stream, lambda: dtod_async(dev_b.ptr, dev_a.ptr, size, stream))
        graph.launch()
        dtoh_async(host_out, dev_b, size, stream)
        stream.synchronize()
        graph_exact = bool(np.array_equal(host_out.array(data.shape, np.float32), data))
        graph.close()
    finally:
        for buf in (host_in, host_out, dev_a, dev_b):
            buf.free()
        stream.close()
    return SelftestResult(
        f"{gpu.name} (cc {gpu.compute_capability})",
        size / (1 << 20),
        exact,
        graph_exact,
        htod_gbps,
        dtoh_gbps,
    )


def check_name(err: Any) -> str:
    name_err, name = cudart.cudaGetErrorName(err)
    return name.decode() if name_err == cudart.cudaError_t.cudaSuccess else str(err)


def _timed(copy: Callable[[], None], stream: Stream, size: int, repeats: int) -> float:
    """GB/s of ``copy`` (best of ``repeats``, each synchronised)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        copy()
        stream.synchronize()
        best = min(best, time.perf_counter() - start)
    return size / best / 1e9


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.cuda_buffers",
        description="CUDA buffer self-check (cuda-python, no TensorRT).",
    )
    parser.add_argument("--selftest", action="store_true", help="run the host/device round trip")
    parser.add_argument("--megabytes", type=float, default=64.0, help="transfer size (default 64)")
    args = parser.parse_args(argv)
    if not args.selftest:
        parser.print_help()
        return 0
    try:
        r = selftest(args.megabytes)
    except CudaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"{r.device}: {r.megabytes:.0f} MiB round trip exact={r.exact}, CUDA graph replay "
        f"exact={r.graph_exact}, H2D {r.htod_gbps:.1f} GB/s, D2H {r.dtoh_gbps:.1f} GB/s (pinned)"
    )
    return 0 if r.exact and r.graph_exact else 1


if __name__ == "__main__":
    sys.exit(main())
