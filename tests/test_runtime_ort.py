"""The CPU backends against PyTorch, backend choice, and the ``Deblurrer`` API."""

import logging
import sys
import types
import warnings

import numpy as np
import pytest
import torch

from runtime import Deblurrer, load_bundle
from runtime import backend as backend_module
from runtime.backend import Backend, create_backend
from runtime.errors import BackendError, ImageError
from runtime.ort_backend import OrtBackend, provider_list


@pytest.fixture(scope="module", params=["onnxruntime", "openvino"])
def backend(tiny_bundle, request):
    """Each CPU backend in FP32 (OpenVINO's own tests: ``test_runtime_openvino.py``)."""
    return create_backend(load_bundle(tiny_bundle[0]), request.param, "cpu", "fp32", threads=1)


# The repeated shape runs OpenVINO's cached compiled model again.
@pytest.mark.parametrize("shape", [(1, 3, 32, 48), (3, 3, 18, 22), (1, 3, 32, 48)])
def test_graphs_match_pytorch(tiny_bundle, backend, shape):
    model = tiny_bundle[1]
    rng = np.random.default_rng(0)
    image = rng.random(shape, dtype=np.float32)
    dmap = rng.random((shape[0], 1) + shape[2:], dtype=np.float32)
    with torch.no_grad():
        timage, tmap = torch.from_numpy(image), torch.from_numpy(dmap)
        ref_map = model.estimate(timage).numpy()
        ref_cond = model.condition_mean(tmap).numpy()
        ref_out = model.restore(timage, tmap, torch.from_numpy(ref_cond)).numpy()
    np.testing.assert_allclose(
        backend.run("estimate", {"image": image})["defocus_map"], ref_map, atol=1e-5, rtol=1e-5
    )
    cond = backend.run("condition", {"defocus_map": dmap})["cond_mean"]
    np.testing.assert_allclose(cond, ref_cond, atol=1e-5, rtol=1e-5)
    out = backend.run("restore", {"image": image, "defocus_map": dmap, "cond_mean": cond})["deblurred"]
    np.testing.assert_allclose(out, ref_out, atol=1e-5, rtol=1e-5)


def test_cuda_request_without_gpu_warns_and_falls_back(tiny_bundle, caplog, capfd):
    with warnings.catch_warnings(record=True) as raised, caplog.at_level(logging.WARNING, logger="runtime"):
        warnings.simplefilter("always")
        fallback = OrtBackend(load_bundle(tiny_bundle[0]), provider="cuda", threads=1)
    assert fallback.device == "cpu"
    assert fallback.active_providers == ["CPUExecutionProvider"]
    assert "fell back to CPUExecutionProvider" in caplog.text
    # Only the project's own warning: no ONNX Runtime UserWarning, no C++ log lines.
    assert [str(w.message) for w in raised] == []
    assert "CUDAExecutionProvider" not in capfd.readouterr().err


@pytest.mark.parametrize(
    "provider,expected",
    [
        ("cpu", ["CPUExecutionProvider"]),
        ("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]),
        ("tensorrt", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]),
    ],
)
def test_provider_list(provider, expected):
    assert [p if isinstance(p, str) else p[0] for p in provider_list(provider)] == expected


def test_auto_backend_without_tensorrt_picks_onnxruntime(tiny_bundle, caplog):
    with caplog.at_level(logging.INFO, logger="runtime"):
        with pytest.raises(BackendError, match="no CUDAExecutionProvider here"):
            create_backend(load_bundle(tiny_bundle[0]), "auto", "cuda", "fp32", threads=1)
    assert "not tensorrt: tensorrt is not installed" in caplog.text


class _RecordingTrt(Backend):
    """Stands in for ``TrtBackend`` (no TensorRT here): records the precision it got."""

    name = "tensorrt"

    def __init__(self, bundle, precision, cuda_graphs=False):
        super().__init__(bundle, "cuda", precision)

    def run(self, graph, inputs):
        raise AssertionError("not run in these tests")


@pytest.fixture
def fp16_engine_fits(monkeypatch):
    """TensorRT as if installed, with an fp16 engine that fits this GPU (and no fp32 one)."""
    monkeypatch.setattr(
        backend_module,
        "tensorrt_unusable",
        lambda bundle, precision: None if precision == "fp16" else "no fp32 engine",
    )
    module = types.ModuleType("runtime.trt_backend")
    module.TrtBackend = _RecordingTrt
    monkeypatch.setitem(sys.modules, "runtime.trt_backend", module)


@pytest.mark.parametrize("backend", ["auto", "tensorrt"])
def test_default_precision_is_fp16_where_a_tensorrt_engine_fits(tiny_bundle, fp16_engine_fits, backend):
    """The library's policy, not the command line's (was: Deblurrer(device="cuda") ran fp32)."""
    deblurrer = Deblurrer(tiny_bundle[0], backend=backend, device="cuda")
    assert (deblurrer.backend.name, deblurrer.backend.precision) == ("tensorrt", "fp16")
    bundle = load_bundle(tiny_bundle[0])
    assert create_backend(bundle, "auto", "cuda").precision == "fp16"
    with pytest.raises(BackendError, match="cannot use TensorRT: no fp32 engine"):
        create_backend(bundle, "tensorrt", "cuda", "fp32")


def test_default_precision_elsewhere_is_the_backends_best(tiny_bundle, fp16_engine_fits):
    bundle = load_bundle(tiny_bundle[0])
    assert create_backend(bundle, "onnxruntime", "cpu", threads=1).precision == "fp32"
    assert Deblurrer(bundle, backend="onnxruntime", threads=1).backend.precision == "fp32"
    assert backend_module.default_precision(bundle, "onnxruntime", "cuda", None) == "fp32"
    assert backend_module.default_precision(bundle, "openvino", "cpu", None) is None  # its CPU's best
    assert backend_module.default_precision(bundle, "auto", "cuda", "fp32") == "fp32"


def test_deblurrer_and_backend_are_context_managers(tiny_bundle, monkeypatch):
    closed = []
    with create_backend(load_bundle(tiny_bundle[0]), "onnxruntime", "cpu", threads=1) as backend:
        monkeypatch.setattr(backend, "close", lambda: closed.append("backend"))
    with Deblurrer(tiny_bundle[0], backend="onnxruntime", threads=1) as deblurrer:
        monkeypatch.setattr(deblurrer.backend, "close", lambda: closed.append("deblurrer"))
        out, _ = deblurrer.run(np.zeros((8, 8, 3), np.uint8))
    assert closed == ["backend", "deblurrer"] and out.shape == (8, 8, 3)


def test_tensorrt_backend_needs_cuda_device(tiny_bundle):
    with pytest.raises(BackendError, match="needs a CUDA GPU, and the device is cpu"):
        create_backend(load_bundle(tiny_bundle[0]), "tensorrt", "cpu")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_deblurrer_keeps_dtype_and_matches_pytorch(tiny_bundle, dtype):
    folder, model = tiny_bundle
    rng = np.random.default_rng(1)
    top = {np.uint8: 255, np.uint16: 65535, np.float32: 1.0}[dtype]
    image = (rng.random((37, 51, 3)) * top).astype(dtype)
    out, dmap = Deblurrer(folder, precision="fp32", threads=1).run(image)
    assert out.dtype == dtype and out.shape == image.shape and dmap.shape == (37, 51)
    padded = np.pad(image.astype(np.float32) / top, ((0, 1), (0, 1), (0, 0)), mode="reflect")
    with torch.no_grad():
        ref, ref_map = model(torch.from_numpy(padded.transpose(2, 0, 1).copy())[None])
    ref = np.clip(ref[0].numpy().transpose(1, 2, 0)[:37, :51], 0, 1) * top
    rounding = 0.5 if dtype != np.float32 else 0.0  # to integers, plus float error of ~1e-5
    np.testing.assert_allclose(out.astype(np.float64), ref, atol=rounding + 2e-5 * top)
    np.testing.assert_allclose(dmap, ref_map[0, 0, :37, :51].numpy(), atol=1e-5)


def test_defocus_scale_and_user_map(tiny_bundle):
    deblurrer = Deblurrer(tiny_bundle[0], precision="fp32", threads=1)
    image = np.random.default_rng(2).random((40, 30, 3), dtype=np.float32)
    base, dmap = deblurrer.run(image)
    doubled, dmap2 = deblurrer.run(image, defocus_scale=2.0)
    np.testing.assert_allclose(dmap2, 2 * dmap, rtol=1e-6)
    supplied, used = deblurrer.run(image, defocus_map=dmap * 2)
    np.testing.assert_allclose(used, dmap2, rtol=1e-6)
    np.testing.assert_allclose(supplied, doubled, atol=1e-6)
    assert np.abs(doubled - base).max() > 1e-2


def test_concat_bundle_runs_without_condition_graph(concat_bundle):
    out, dmap = Deblurrer(concat_bundle[0], threads=1).run(np.zeros((10, 12, 3), np.uint8))
    assert out.shape == (10, 12, 3) and dmap.shape == (10, 12)


class FakeCudaArray:
    """Looks like a GPU array (``__cuda_array_interface__``) without any GPU."""

    shape = (8, 8, 3)
    __cuda_array_interface__ = {"shape": (8, 8, 3), "typestr": "|u1", "data": (0, False), "version": 3}


class FakeDLPackCuda:
    def __dlpack_device__(self):
        return (2, 0)


@pytest.mark.parametrize("array", [FakeCudaArray(), FakeDLPackCuda()])
def test_gpu_arrays_on_cpu_backend_are_refused_clearly(tiny_bundle, array):
    with pytest.raises(BackendError, match="GPU arrays need a GPU backend"):
        Deblurrer(tiny_bundle[0], threads=1).run(array)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(tile=63), "multiple of 2"),
        (dict(overlap=10), "below .* minimum for exact tiling"),
        (dict(tile=40), "--tile 40 must exceed the 'restore' overlap of 40 px"),
        (dict(tile=20), r"--tile 20 \(estimate tiles: 40 px\) must exceed the 'estimate' overlap"),
        (dict(backend="nope"), "unknown backend"),
        (dict(threads=0), "--threads must be >= 1"),
    ],
)
def test_bad_options(tiny_bundle, kwargs, message):
    with pytest.raises(BackendError, match=message):
        Deblurrer(tiny_bundle[0], **kwargs)


@pytest.mark.parametrize(
    "image,message",
    [
        (np.zeros((8, 8), np.uint8), r"must be \(H, W, 3\)"),
        (np.zeros((8, 8, 3), np.int32), "dtype must be uint8, uint16 or float32"),
    ],
)
def test_bad_images(tiny_bundle, image, message):
    with pytest.raises(ImageError, match=message):
        Deblurrer(tiny_bundle[0], threads=1).run(image)
