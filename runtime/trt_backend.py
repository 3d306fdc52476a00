"""TensorRT backend: the bundle's serialized engines, run with named I/O tensors.

One ``IExecutionContext`` per graph, device buffers and pinned host buffers
allocated once for the profile's largest shapes (outputs sized by the engine itself
for the largest inputs, as NVIDIA's ``common_runtime.py`` does), one CUDA stream, async copies,
and optionally one CUDA graph per input shape. Engines that are stale (their ONNX
changed) or foreign (other TensorRT, other GPU) are refused before deserialising.
"""

import logging
from typing import Any, Dict, List, Tuple

import numpy as np
import tensorrt as trt  # type: ignore[import-untyped, unused-ignore]

from runtime import cuda_buffers as cb
from runtime.backend import Backend
from runtime.bundle import Bundle, GraphEntry, check_engines, check_profile
from runtime.device_arrays import cupy_module, is_device_array, to_cupy
from runtime.errors import BackendError, MissingDependency
from runtime.gpu import cuda_gpus

log = logging.getLogger("runtime")


class _Tensor:
    """One named I/O tensor of an engine with its device and pinned buffers."""

    def __init__(self, name: str, is_input: bool, dtype: Any, max_shape: Tuple[int, ...], size: int):
        self.name = name
        self.is_input = is_input
        self.dtype = np.dtype(dtype)
        self.max_shape = max_shape
        self.device = cb.DeviceBuffer(size)
        self.host = cb.PinnedBuffer(size)

    def free(self) -> None:
        self.device.free()
        self.host.free()


class _EngineRunner:
    """Engine + context + buffers of one graph."""

    def __init__(
        self, runtime: trt.Runtime, path: str, entry: GraphEntry, stream: cb.Stream, cuda_graphs: bool
    ):
        with open(path, "rb") as f:
            self.engine = runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise BackendError(f"TensorRT could not deserialise {path} (see the TensorRT log above)")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendError(f"TensorRT could not create an execution context for {path}")
        self.entry = entry
        self.stream = stream
        self.cuda_graphs = cuda_graphs
        self.graphs: Dict[Tuple[Tuple[int, ...], ...], cb.CudaGraph] = {}
        self.tensors = self._allocate()
        for tensor in self.tensors.values():
            if not self.context.set_tensor_address(tensor.name, tensor.device.ptr):
                raise BackendError(f"set_tensor_address failed for {tensor.name!r}")

    def _allocate(self) -> Dict[str, _Tensor]:
        """Buffers for the profile's largest inputs and the outputs the engine infers from them."""
        modes: List[Tuple[str, bool]] = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            modes.append((name, self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT))
        for name, is_input in modes:
            if is_input and not self.context.set_input_shape(
                name, self.engine.get_tensor_profile_shape(name, 0)[2]
            ):
                raise BackendError(f"TensorRT refused the profile maximum of {name!r}")
        unresolved = self.context.infer_shapes()
        if unresolved:
            raise BackendError(
                f"TensorRT cannot infer the shapes of {', '.join(unresolved)} "
                f"in the {self.entry.name!r} engine"
            )
        specs = {
            name: (
                _dims(self.context.get_tensor_shape(name)),
                np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))),
            )
            for name, _ in modes
        }
        sizes = cb.plan_buffers(specs)
        return {
            name: _Tensor(name, is_input, specs[name][1], specs[name][0], sizes[name])
            for name, is_input in modes
        }

    def run(self, inputs: Dict[str, Any], on_device: bool) -> Dict[str, Any]:
        for name, value in inputs.items():
            self._load_input(self.tensors[name], value, on_device)
        key = tuple(tuple(v.shape) for v in inputs.values())
        self._execute(key)
        outputs = {}
        for tensor in self.tensors.values():
            if not tensor.is_input:
                outputs[tensor.name] = self._read_output(tensor, on_device)
        self.stream.synchronize()
        if on_device:
            return outputs
        return {k: np.array(v, dtype=np.float32) for k, v in outputs.items()}

    def _load_input(self, tensor: _Tensor, value: Any, on_device: bool) -> None:
        shape = tuple(value.shape)
        size = cb.nbytes(shape, tensor.dtype)
        if size > tensor.device.size:
            raise BackendError(
                f"input {tensor.name!r} {shape} exceeds the engine profile maximum {tensor.max_shape}"
            )
        if not self.context.set_input_shape(tensor.name, shape):
            raise BackendError(f"TensorRT refused shape {shape} for {tensor.name!r}")
        if on_device:
            cupy = cupy_module()
            staged = cupy.ascontiguousarray(value, dtype=tensor.dtype)
            cb.dtod_async(tensor.device.ptr, staged.data.ptr, size, self.stream)
            # The staged copy must outlive the async copy.
            self.stream.synchronize()
        else:
            tensor.host.array(shape, tensor.dtype)[...] = value
            cb.htod_async(tensor.device, tensor.host, size, self.stream)

    def _execute(self, key: Tuple[Tuple[int, ...], ...]) -> None:
        graph = self.graphs.get(key)
        if graph is not None:
            graph.launch()
            return
        self._enqueue()
        if self.cuda_graphs:
            # Enqueued once above (TensorRT's set-up work); now capture the steady state.
            self.graphs[key] = cb.CudaGraph(self.stream, self._enqueue)

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.ptr):
            raise BackendError(f"TensorRT execute_async_v3 failed for {self.entry.name!r}")

    def _read_output(self, tensor: _Tensor, on_device: bool) -> Any:
        shape = _dims(self.context.get_tensor_shape(tensor.name))
        size = cb.nbytes(shape, tensor.dtype)
        if on_device:
            cupy = cupy_module()
            out = cupy.empty(shape, dtype=tensor.dtype)
            cb.dtod_async(out.data.ptr, tensor.device.ptr, size, self.stream)
            return out
        cb.dtoh_async(tensor.host, tensor.device, size, self.stream)
        return tensor.host.array(shape, tensor.dtype)

    def close(self) -> None:
        for graph in self.graphs.values():
            graph.close()
        for tensor in self.tensors.values():
            tensor.free()
        self.graphs.clear()


class TrtBackend(Backend):
    """TensorRT engines of a bundle.

    Args:
        bundle: The loaded bundle; ``bundle.engines[precision]`` must exist.
        precision: ``fp16`` or ``fp32``. Default: ``fp16``.
        cuda_graphs: Capture one CUDA graph per input shape. Default: False.
        device_id: CUDA device. Default: 0.

    Raises:
        BundleError: No engine for ``precision``, or a stale / foreign engine.
        BackendError: TensorRT cannot load an engine.
    """

    name = "tensorrt"

    def __init__(
        self, bundle: Bundle, precision: str = "fp16", cuda_graphs: bool = False, device_id: int = 0
    ):
        super().__init__(bundle, "cuda", precision)
        cb.check(cb.cudart.cudaSetDevice(device_id), "cudaSetDevice")
        gpus = cuda_gpus()
        if device_id >= len(gpus):
            raise MissingDependency(f"no CUDA device {device_id} (this machine has {len(gpus)})")
        gpu = gpus[device_id]
        paths = check_engines(bundle, precision, trt.__version__, gpu)
        self.profile = bundle.engines[precision]["profile"]
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.stream = cb.Stream()
        self.runners: Dict[str, _EngineRunner] = {}
        try:
            for name, graph in bundle.graphs.items():
                self.runners[name] = _EngineRunner(
                    self.runtime, str(paths[name]), graph, self.stream, cuda_graphs
                )
        except Exception:
            self.close()
            raise
        self.gpu = gpu.name

    def describe(self) -> str:
        return f"tensorrt {trt.__version__} on {self.gpu}, {self.precision}"

    def run(self, graph: str, inputs: Dict[str, Any]) -> Dict[str, Any]:
        on_device = any(is_device_array(v) for v in inputs.values())
        if on_device:
            inputs = {k: to_cupy(v) for k, v in inputs.items()}
        for value in inputs.values():
            if value.ndim == 4 and self.profile is not None:
                check_profile(self.profile, value.shape[0], value.shape[2], value.shape[3])
        return self.runners[graph].run(inputs, on_device)

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()
        self.runners = {}
        self.stream.close()


def _dims(dims: trt.Dims) -> Tuple[int, ...]:
    """A ``trt.Dims`` as a tuple of ints (Dims supports ``len`` and indexing)."""
    return tuple(int(dims[i]) for i in range(len(dims)))
