"""Triton model repository (export.triton): configs against Triton's schema, and a real server.

The server tests start the ``tritonserver`` binary of the nvidia-pytriton wheel on
127.0.0.1 with the generated repository (its Python-backend ``deblur`` model) and
compare what it serves with ``runtime.Deblurrer`` in this process.
"""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from export import triton
from export.triton_server import ServerError, TritonServer, group_alive
from runtime import BackendError, Deblurrer, ImageError
from runtime.bundle import DEFAULT_BUNDLE, PACKAGE_ROOT, load_bundle
from runtime.image_io import read_image
from training.metrics import psnr

SERVE_MISSING = [m for m in ("tritonclient", "pytriton") if importlib.util.find_spec(m) is None]
SKIP_REASON = (
    f"serving packages absent ({', '.join(SERVE_MISSING)}): pip install -e '.[serve]' "
    "&& pip install --no-deps nvidia-pytriton==0.7.0"
)
needs_serve = pytest.mark.skipif(bool(SERVE_MISSING), reason=SKIP_REASON)
#: Small tiles make small images several tiles wide; one thread for the shared CI cores.
TILE, THREADS = 128, 1
FIDELITY_DB = 50.0
GRAPH_DTYPES = {"float32": "TYPE_FP32"}


def _generate(out: Path, *extra: str, bundle: Path = DEFAULT_BUNDLE) -> Path:
    argv = ["--bundle", str(bundle), "--out", str(out), "--tile", str(TILE), "--threads", str(THREADS)]
    assert triton.main(argv + list(extra)) == 0
    return out


def _pb2():
    if SERVE_MISSING:
        pytest.skip(SKIP_REASON)
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def _parse(path: Path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), _pb2().ModelConfig())


def _groups(config) -> list:
    """(kind name, count) of each instance group."""
    kinds = _pb2().ModelInstanceGroup.Kind
    return [(kinds.Name(g.kind), g.count) for g in config.instance_group]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return _generate(tmp_path_factory.mktemp("triton") / "repo")


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(DEFAULT_BUNDLE)


def test_every_config_parses_against_triton_schema(repo, bundle):
    configs = sorted(repo.glob("*/config.pbtxt"))
    names = [p.parent.name for p in configs]
    assert names == sorted(["deblur"] + [f"{g}_onnx" for g in bundle.graphs])
    for path in configs:
        config = _parse(path)
        assert config.name == path.parent.name
        assert (repo / config.name / "1").is_dir()


def test_graph_configs_follow_the_manifest(repo, bundle):
    for graph_name, graph in bundle.graphs.items():
        config = _parse(repo / f"{graph_name}_onnx" / "config.pbtxt")
        assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 8
        assert config.dynamic_batching.max_queue_delay_microseconds > 0
        for specs, tensors in ((graph.inputs, config.input), (graph.outputs, config.output)):
            assert [t.name for t in tensors] == [s.name for s in specs]
            for spec, tensor in zip(specs, tensors):
                assert _pb2().DataType.Name(tensor.data_type) == GRAPH_DTYPES[spec.dtype]
                assert list(tensor.dims) == [d if isinstance(d, int) else -1 for d in spec.shape[1:]]
        onnx_copy = repo / f"{graph_name}_onnx" / "1" / "model.onnx"
        assert onnx_copy.read_bytes() == bundle.onnx_path(graph_name, "fp32").read_bytes()


def test_deblur_config_inputs_outputs_and_parameters(repo):
    config = _parse(repo / "deblur" / "config.pbtxt")
    assert config.backend == "python" and config.max_batch_size == 0
    inputs = {t.name: t for t in config.input}
    assert set(inputs) == {"image_uint8", "image_uint16", "image_float32", "defocus_scale", "defocus_map"}
    assert all(t.optional for t in inputs.values())
    assert list(inputs["image_uint16"].dims) == [-1, -1, 3] and list(inputs["defocus_map"].dims) == [-1, -1]
    assert [t.name for t in config.output] == [
        "deblurred_uint8",
        "deblurred_uint16",
        "deblurred_float32",
        "defocus_map_used",
    ]
    assert _groups(config) == [("KIND_CPU", 1)]
    assert config.parameters["tile"].string_value == str(TILE)
    model = repo / "deblur" / "1"
    assert (model / "model.py").read_text() == triton.MODEL_TEMPLATE.read_text()
    assert (model / "runtime" / "deblurrer.py").is_file() and (model / "common").is_dir()
    load_bundle(model / "bundle")  # sha256 of every copied graph checked


def test_gpu_instances_and_engine_plans(tmp_path):
    """A bundle with engines gets ``_plan`` models: batch from the engine profile, KIND_GPU."""
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle, ignore=shutil.ignore_patterns("training", "*.safetensors"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    profile = {"min": [1, 64, 64], "opt": [4, 512, 512], "max": [6, 1024, 1024]}
    graphs = {}
    for name in manifest["graphs"]:
        (bundle / f"{name}.fp16.engine").write_bytes(f"plan of {name}".encode())
        graphs[name] = {"file": f"{name}.fp16.engine", "onnx_sha256": "x", "engine_sha256": "y"}
    manifest["engines"] = {
        "fp16": {
            "tensorrt_version": "10.13.0",
            "gpu": "NVIDIA H100",
            "profile": profile,
            "compute_capability": "9.0",
            "hardware_compatibility": "none",
            "graphs": graphs,
        }
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    repo = _generate(tmp_path / "repo", "--kind", "gpu", "--instances", "2", bundle=bundle)
    for name in manifest["graphs"]:
        config = _parse(repo / f"{name}_plan" / "config.pbtxt")
        assert config.platform == "tensorrt_plan" and config.max_batch_size == 6
        assert _groups(config) == [("KIND_GPU", 1)]
        assert (repo / f"{name}_plan" / "1" / "model.plan").read_bytes() == f"plan of {name}".encode()
    deblur = _parse(repo / "deblur" / "config.pbtxt")
    assert _groups(deblur) == [("KIND_GPU", 2)]
    assert "TensorRT 10.13.0 on NVIDIA H100" in (repo / "README.md").read_text()


def test_existing_repository_needs_force(tmp_path, capsys):
    out = _generate(tmp_path / "repo")
    (out / "stale.txt").write_text("old")
    argv = ["--bundle", str(DEFAULT_BUNDLE), "--out", str(out)]
    assert triton.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {out} exists and is not empty: pass --force to replace it"
    assert triton.main(argv + ["--force"]) == 0
    assert not (out / "stale.txt").exists() and (out / "deblur" / "config.pbtxt").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]  # no stage or old copy left


def test_bad_bundle_is_one_error_line(tmp_path, capsys):
    assert triton.main(["--bundle", str(tmp_path / "none"), "--out", str(tmp_path / "repo")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "repo").exists()


# --- the real server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(repo):
    if SERVE_MISSING:
        pytest.skip(SKIP_REASON)
    with TritonServer(repo) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(server.url)


@pytest.fixture(scope="module")
def local():
    deblurrer = Deblurrer(DEFAULT_BUNDLE, tile=TILE, threads=THREADS)
    yield deblurrer
    deblurrer.close()


def _infer(client, image: np.ndarray, dtype_name=None, **extra):
    """One request; returns (deblurred, defocus_map_used)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import np_to_triton_dtype

    name = f"image_{dtype_name or image.dtype}"
    tensors = [(name, image)] + [(k, np.asarray(v)) for k, v in extra.items()]
    inputs = []
    for tensor_name, array in tensors:
        inputs.append(httpclient.InferInput(tensor_name, list(array.shape), np_to_triton_dtype(array.dtype)))
        inputs[-1].set_data_from_numpy(array)
    result = client.infer("deblur", inputs)
    return result.as_numpy(f"deblurred_{image.dtype}"), result.as_numpy("defocus_map_used")


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR with the peak of ``a``'s sample type (8-bit 255, 16-bit 65535, float 1)."""
    return psnr(a, b, data_range={np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(a.dtype, 1.0))


def _photo(height: int, width: int, dtype) -> np.ndarray:
    rgb = read_image(PACKAGE_ROOT / "samples" / "coffee_blurry.png").rgb
    crop = np.ascontiguousarray(rgb[:height, :width])
    if np.dtype(dtype) == np.uint8:
        return crop
    scaled = crop.astype(np.float32) / 255.0
    noise = np.random.default_rng(0).normal(0, 0.002, scaled.shape).astype(np.float32)
    scaled = np.clip(scaled + noise, 0, 1)  # use more than 8 bits of the range
    return (scaled * 65535 + 0.5).astype(np.uint16) if np.dtype(dtype) == np.uint16 else scaled


@needs_serve
@pytest.mark.parametrize(
    "height, width, dtype", [(120, 520, np.uint8), (96, 130, np.uint16), (64, 90, np.float32)]
)
def test_served_output_matches_the_runtime(client, local, height, width, dtype):
    image = _photo(height, width, dtype)
    if width == 520:
        assert local.count_tiles(height, width) >= 2 * 4  # several tiles wide, in each pass
    sharp, dmap = _infer(client, image)
    want_sharp, want_map = local.run(image)
    assert sharp.dtype == image.dtype and sharp.shape == image.shape and dmap.shape == (height, width)
    fidelity = psnr_db(sharp, want_sharp)
    print(
        f"served vs local {height}x{width} {np.dtype(dtype)}: {fidelity:.1f} dB, "
        f"max abs map difference {np.abs(dmap - want_map).max():.3g}"
    )
    assert fidelity >= FIDELITY_DB
    np.testing.assert_allclose(dmap, want_map, atol=1e-5)


@needs_serve
def test_served_model_runs_the_runtime_copied_into_the_repository(server, client, repo):
    assert client.is_model_ready("deblur")
    assert f"deblur: runtime {repo.resolve() / 'deblur' / '1' / 'runtime'}," in server.log_file.read_text()


@needs_serve
def test_grpc_endpoint_serves_the_same(server, client):
    import tritonclient.grpc as grpcclient

    image = _photo(32, 48, np.uint16)
    inp = grpcclient.InferInput("image_uint16", list(image.shape), "UINT16")
    inp.set_data_from_numpy(image)
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as grpc:
        result = grpc.infer("deblur", [inp])
    np.testing.assert_array_equal(result.as_numpy("deblurred_uint16"), _infer(client, image)[0])


@needs_serve
def test_served_defocus_scale_and_map(client, local):
    image = _photo(64, 96, np.uint8)
    given = np.full((64, 96), 0.3, np.float32)
    sharp, dmap = _infer(client, image, defocus_scale=np.array([1.5], np.float32), defocus_map=given)
    want_sharp, want_map = local.run(image, defocus_scale=1.5, defocus_map=given)
    assert psnr_db(sharp, want_sharp) >= FIDELITY_DB
    np.testing.assert_allclose(dmap, np.full_like(given, 0.45), rtol=1e-6)
    scaled_only, _ = _infer(client, image, defocus_scale=np.array([0.0], np.float32))
    assert psnr_db(scaled_only, local.run(image, defocus_scale=0.0)[0]) >= FIDELITY_DB


BAD_REQUESTS = {
    "wrong dtype": (
        (np.zeros((8, 8, 3), np.int32), "uint8"),
        "inference input 'image_uint8' data-type is 'INT32', but model 'deblur' expects 'UINT8'",
    ),
    "wrong rank": (
        (np.zeros((8, 8), np.uint8), None),
        "unexpected shape for input 'image_uint8' for model 'deblur'. Expected [-1,-1,3], got [8,8]",
    ),
    "four channels": ((np.zeros((8, 8, 4), np.uint8), None), "Expected [-1,-1,3], got [8,8,4]"),
    "float out of range": (
        (np.full((8, 8, 3), 2.0, np.float32), None),
        "error: image has float32 samples in [2, 2]; expected [0, 1]",
    ),
    "empty image": ((np.zeros((0, 8, 3), np.uint8), None), "error: image is empty: shape (0, 8, 3)"),
    "absurd size": (
        (np.zeros((2, 20000, 3), np.uint8), None),
        "error: image 2x20000 exceeds this server's limits: sides up to 16384 px",
    ),
}


@needs_serve
@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_gets_a_clear_error_and_the_server_keeps_serving(client, case):
    from tritonclient.utils import InferenceServerException

    (array, dtype_name), message = BAD_REQUESTS[case]
    with pytest.raises(InferenceServerException) as info:
        _infer(client, array, dtype_name)
    assert message in str(info.value)
    assert info.value.status() == "400"
    assert client.is_server_live() and client.is_model_ready("deblur")
    sharp, _ = _infer(client, _photo(16, 16, np.uint8))
    assert sharp.shape == (16, 16, 3)


@needs_serve
def test_request_without_image_and_bad_map_are_refused(client):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    scale = httpclient.InferInput("defocus_scale", [1], "FP32")
    scale.set_data_from_numpy(np.array([1.0], np.float32))
    with pytest.raises(
        InferenceServerException,
        match="send exactly one of image_uint8, image_uint16, image_float32, got none",
    ):
        client.infer("deblur", [scale])
    with pytest.raises(
        InferenceServerException, match=r"defocus map is \(4, 4\), the image is \(16, 16\)"
    ) as bad_map:
        _infer(client, _photo(16, 16, np.uint8), defocus_map=np.zeros((4, 4), np.float32))
    with pytest.raises(InferenceServerException, match=r"defocus-scale must be in \[0, ") as bad_scale:
        _infer(client, _photo(16, 16, np.uint8), defocus_scale=np.array([-1.0], np.float32))
    assert bad_map.value.status() == bad_scale.value.status() == "400"


@needs_serve
def test_server_stops_and_leaves_no_process(repo):
    server = TritonServer(repo).start()
    pgid = server.process.pid
    assert group_alive(pgid)
    server.stop()
    assert not group_alive(pgid)


@needs_serve
def test_server_that_cannot_load_reports_its_log(tmp_path):
    with pytest.raises(ServerError, match="before it was ready"):
        TritonServer(tmp_path, models=["deblur"]).start()


class _FakePbUtils:
    """The two names of ``triton_python_backend_utils`` that an error response uses."""

    class TritonError:
        INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

        def __init__(self, message, code):
            self.message, self.code = message, code

    class InferenceResponse:
        def __init__(self, output_tensors=None, error=None):
            self.output_tensors, self.error = output_tensors, error


@pytest.mark.parametrize(
    "error, code",
    [
        (ImageError("image has 2 channels"), "INVALID_ARG"),
        (BackendError("CUDA error 2 (cudaErrorMemoryAllocation): out of memory"), "INTERNAL"),
    ],
)
def test_error_response_tells_client_errors_from_server_errors(monkeypatch, error, code):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _FakePbUtils)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the model file adds its folder
    spec = importlib.util.spec_from_file_location("triton_model_under_test", triton.MODEL_TEMPLATE)
    model_file = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model_file)

    class Failing:
        def run(self, image, **options):
            raise error

    model = model_file.TritonPythonModel()
    model.max_side, model.max_pixels, model.deblurrer = 64, 4096, Failing()
    monkeypatch.setattr(model, "_inputs", lambda request: (np.zeros((8, 8, 3), np.uint8), 1.0, None))
    response = model._respond(request=None)
    assert (response.error.code, response.error.message) == (code, f"error: {error}")
