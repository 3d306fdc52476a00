"""TensorRT path: buffer sizing, CUDA checks and type checks here; engines where TensorRT runs."""

import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from common.hashing import sha256_file
from runtime import Deblurrer, load_bundle
from runtime.cuda_buffers import CudaError, device_count, nbytes, plan_buffers, selftest
from runtime.gpu import cuda_gpus, import_tensorrt

ROOT = Path(__file__).resolve().parent.parent
NO_TRT = (
    "TensorRT library not installed (at most the tensorrt-stubs type stubs): engine "
    "build / run tests need a GPU machine with `pip install tensorrt`"
)
NO_GPU = "no CUDA GPU visible (cudaGetDeviceCount): this test runs on a GPU machine"


@pytest.mark.parametrize(
    "shape,dtype,expected",
    [
        ((8, 3, 1024, 1024), np.float32, 8 * 3 * 1024 * 1024 * 4),
        ((8, 3, 1024, 1024), np.float16, 8 * 3 * 1024 * 1024 * 2),
        ((8, 32), np.float32, 8 * 32 * 4),
        ((1, 1, 1, 1), np.float32, 4),
        ((0, 3, 64, 64), np.float32, 0),
    ],
)
def test_nbytes(shape, dtype, expected):
    assert nbytes(shape, dtype) == expected


def test_nbytes_rejects_dynamic_dims():
    with pytest.raises(ValueError, match="dynamic"):
        nbytes((-1, 3, 64, 64), np.float32)


def test_buffers_for_profile_max(tiny_bundle):
    """Bytes of the profile's largest shapes (TrtBackend asks the engine for its outputs'; the
    manifest resolves the same, and test_tensorrt_matches_onnxruntime compares them on a GPU)."""
    bundle = load_bundle(tiny_bundle[0])
    restore = bundle.graphs["restore"]
    max_inputs = {"image": (8, 3, 1024, 1024), "defocus_map": (8, 1, 1024, 1024), "cond_mean": (8, 8)}
    tensors = {name: (shape, np.float32) for name, shape in max_inputs.items()}
    tensors["deblurred"] = (restore.output_shape("deblurred", max_inputs), np.float32)
    sizes = plan_buffers(tensors)
    assert sizes == {"image": 100663296, "defocus_map": 33554432, "cond_mean": 256, "deblurred": 100663296}


def test_stub_only_tensorrt_counts_as_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    assert import_tensorrt() is None


@pytest.mark.skipif(device_count() > 0, reason="checks the error without a GPU")
def test_selftest_without_gpu_is_one_clear_line():
    with pytest.raises(CudaError, match="^no CUDA device: cudaGetDeviceCount says cudaError"):
        selftest(1)
    result = subprocess.run(
        [sys.executable, "-m", "runtime.cuda_buffers", "--selftest"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert re.fullmatch(r"error: no CUDA device: cudaGetDeviceCount says cudaError\w+\n", result.stderr)


def _build_engines(trt, bundle_dir: Path, profile: dict) -> None:
    """Build FP32 engines of every graph and record them in the manifest (as export does)."""
    logger = trt.Logger(trt.Logger.WARNING)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    gpu = cuda_gpus()[0]
    graphs = {}
    for name, graph in manifest["graphs"].items():
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        assert parser.parse_from_file(str(bundle_dir / graph["files"]["fp32"])), parser.get_error(0)
        config = builder.create_builder_config()
        opt = builder.create_optimization_profile()
        for tensor in graph["inputs"]:
            if tensor["name"] == "cond_mean":
                c = tensor["shape"][1]
                opt.set_shape("cond_mean", *[(profile[k][0], c) for k in ("min", "opt", "max")])
            else:
                c = tensor["shape"][1]
                opt.set_shape(
                    tensor["name"],
                    *[(n, c, h, w) for n, h, w in (profile["min"], profile["opt"], profile["max"])],
                )
        config.add_optimization_profile(opt)
        path = bundle_dir / f"{name}.fp32.engine"
        path.write_bytes(bytes(builder.build_serialized_network(network, config)))
        graphs[name] = {
            "file": path.name,
            "onnx_sha256": graph["sha256"]["fp32"],
            "engine_sha256": sha256_file(path),
        }
    manifest["engines"] = {
        "fp32": {
            "tensorrt_version": trt.__version__,
            "gpu": gpu.name,
            "compute_capability": gpu.compute_capability,
            "profile": profile,
            "graphs": graphs,
        }
    }
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_tensorrt_matches_onnxruntime(tiny_bundle, tmp_path, cuda_graphs):
    trt = import_tensorrt()
    if trt is None:
        pytest.skip(NO_TRT)
    if device_count() == 0:
        pytest.skip(NO_GPU)
    folder = tmp_path / "bundle"
    shutil.copytree(tiny_bundle[0], folder)
    _build_engines(trt, folder, {"min": [1, 64, 64], "opt": [4, 128, 128], "max": [8, 256, 256]})
    image = np.random.default_rng(0).random((300, 420, 3), dtype=np.float32)
    expected, expected_map = Deblurrer(folder, device="cpu", threads=1, tile=192).run(image)
    trt_deblurrer = Deblurrer(folder, backend="tensorrt", device="cuda", tile=192, cuda_graphs=cuda_graphs)
    assert trt_deblurrer.backend.name == "tensorrt"
    restore = trt_deblurrer.backend.runners["restore"]
    largest = {t.name: t.max_shape for t in restore.tensors.values() if t.is_input}
    assert (
        restore.tensors["deblurred"].max_shape
        == (8, 3, 256, 256)
        == restore.entry.output_shape("deblurred", largest)
    )
    for _ in range(2):  # the second pass replays the captured CUDA graphs
        out, dmap = trt_deblurrer.run(image)
        np.testing.assert_allclose(dmap, expected_map, atol=5e-3)
        np.testing.assert_allclose(out, expected, atol=5e-3)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["engines"]["fp32"]["graphs"]["restore"]["onnx_sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Exception, match="stale.*make engine"):
        Deblurrer(folder, backend="tensorrt", device="cuda", tile=192)
