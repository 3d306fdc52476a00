"""GPU-array paths: CUDA buffers, device-array detection and the CuPy tiling pipeline.

Skipped without a CUDA GPU (and CuPy); on a GPU machine without TensorRT or
onnxruntime-gpu the graphs run through a stand-in backend that copies to the host,
so everything around the backend runs on CuPy arrays.
"""

import numpy as np
import pytest

from runtime import Deblurrer
from runtime.cuda_buffers import device_count
from runtime.device_arrays import is_device_array, to_cupy

pytestmark = pytest.mark.skipif(device_count() == 0, reason="no CUDA GPU visible (cudaGetDeviceCount)")


def test_cuda_buffers_selftest_round_trip():
    from runtime.cuda_buffers import selftest

    result = selftest(32)
    assert result.exact and result.graph_exact
    assert result.htod_gbps > 1 and result.dtoh_gbps > 1


def test_torch_and_cupy_arrays_are_device_arrays():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    torch = pytest.importorskip("torch", reason="torch is not installed")
    tensor = torch.arange(12, dtype=torch.float32, device="cuda").reshape(3, 4)
    assert is_device_array(tensor) and is_device_array(cupy.zeros(3))
    assert not is_device_array(np.zeros(3)) and not is_device_array(tensor.cpu())
    view = to_cupy(tensor)
    view[0, 0] = 42.0  # zero-copy: the torch tensor sees the write
    assert float(tensor[0, 0]) == 42.0


class _HostBackedGpuBackend:
    """Takes and returns CuPy arrays; runs the graphs with the CPU backend in between."""

    device_io = True
    profile = None

    def __init__(self, inner):
        self.inner = inner

    def run(self, graph, inputs):
        import cupy

        host = {k: cupy.asnumpy(v) for k, v in inputs.items()}
        return {k: cupy.asarray(v) for k, v in self.inner.run(graph, host).items()}

    def describe(self):
        return "host-backed stand-in"


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_cupy_input_stays_on_gpu_and_matches_numpy(tiny_bundle, dtype):
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    top = 255 if dtype == np.uint8 else 1.0
    image = (np.random.default_rng(0).random((150, 262, 3)) * top).astype(dtype)
    deblurrer = Deblurrer(tiny_bundle[0], threads=1, tile=64)
    expected, expected_map = deblurrer.run(image)
    deblurrer.backend = _HostBackedGpuBackend(deblurrer.backend)
    deblurrer.pipeline.run = deblurrer.backend.run
    out, dmap = deblurrer.run(cupy.asarray(image))
    assert isinstance(out, cupy.ndarray) and isinstance(dmap, cupy.ndarray)
    assert out.dtype == dtype
    np.testing.assert_allclose(cupy.asnumpy(dmap), expected_map, atol=1e-5)
    tolerance = 1 if dtype == np.uint8 else 1e-5
    np.testing.assert_allclose(cupy.asnumpy(out).astype(np.float64), expected, atol=tolerance)
