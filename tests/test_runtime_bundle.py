"""Manifest reading, model path resolution, engine compatibility and profile checks."""

import json
import shutil

import pytest

from runtime.bundle import BundleError, check_engine_entry, check_profile, load_bundle
from runtime.gpu import GpuInfo


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(tiny_bundle[0], folder)
    return folder


def _edit_manifest(folder, edit):
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_load_bundle_reads_manifest(tiny_bundle):
    bundle = load_bundle(tiny_bundle[0])
    assert bundle.uses_pooling and set(bundle.graphs) == {"estimate", "condition", "restore"}
    assert bundle.size_multiple == 2 and bundle.map_radius_scale_px == 10.0
    assert bundle.precisions() == ["fp32"]
    assert [t.name for t in bundle.graphs["restore"].inputs] == ["image", "defocus_map", "cond_mean"]
    assert bundle.hint_backend is None


@pytest.mark.parametrize(
    "name,backend,precision", [("manifest.json", None, None), ("restore.onnx", "onnxruntime", "fp32")]
)
def test_load_bundle_accepts_manifest_and_graph_paths(tiny_bundle, name, backend, precision):
    bundle = load_bundle(tiny_bundle[0] / name)
    assert (bundle.hint_backend, bundle.hint_precision) == (backend, precision)


def test_engine_path_implies_tensorrt(bundle_copy):
    (bundle_copy / "restore.fp16.engine").write_bytes(b"engine")
    _edit_manifest(
        bundle_copy,
        lambda d: d.update(engines={"fp16": {"graphs": {"restore": {"file": "restore.fp16.engine"}}}}),
    )
    bundle = load_bundle(bundle_copy / "restore.fp16.engine")
    assert (bundle.hint_backend, bundle.hint_precision) == ("tensorrt", "fp16")


@pytest.mark.parametrize(
    "case,message",
    [
        ("not_json", "not valid JSON"),
        ("format", "expected 'defocus-deblur-bundle/1'"),
        ("missing_file", r"condition.onnx \(condition, fp32\) is missing"),
        ("sha", "does not match its sha256"),
        ("no_restore", "needs graphs 'estimate' and 'restore'"),
        ("no_key", "missing or bad key 'size_multiple'"),
        ("stray_onnx", "is not one of the graphs"),
        ("txt", "is not a model"),
        ("empty_dir", "no manifest.json"),
        ("missing", "does not exist"),
    ],
)
def test_load_bundle_errors(bundle_copy, tmp_path, case, message):
    target = bundle_copy
    if case == "not_json":
        (bundle_copy / "manifest.json").write_text("{not json")
    elif case == "format":
        _edit_manifest(bundle_copy, lambda d: d.update(format="other/2"))
    elif case == "missing_file":
        (bundle_copy / "condition.onnx").unlink()
    elif case == "sha":
        with open(bundle_copy / "estimate.onnx", "ab") as f:
            f.write(b"\0")
    elif case == "no_restore":
        _edit_manifest(bundle_copy, lambda d: d["graphs"].pop("restore"))
    elif case == "no_key":
        _edit_manifest(bundle_copy, lambda d: d.pop("size_multiple"))
    elif case == "stray_onnx":
        target = bundle_copy / "other.onnx"
        target.write_bytes(b"x")
    elif case == "txt":
        target = tmp_path / "model.txt"
        target.write_text("hello")
    elif case == "empty_dir":
        target = tmp_path / "empty"
        target.mkdir()
    elif case == "missing":
        target = tmp_path / "nowhere"
    with pytest.raises(BundleError, match=message) as info:
        load_bundle(target)
    assert "\n" not in str(info.value)


def test_default_bundle_missing_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setattr("runtime.bundle.DEFAULT_BUNDLE", tmp_path / "models" / "default")
    with pytest.raises(BundleError, match="no default model .* `make export`"):
        load_bundle(None)


def test_output_shape_resolves_symbolic_dims(tiny_bundle):
    bundle = load_bundle(tiny_bundle[0])
    restore = bundle.graphs["restore"]
    shapes = {"image": (4, 3, 64, 96), "defocus_map": (4, 1, 64, 96), "cond_mean": (4, 8)}
    assert restore.output_shape("deblurred", shapes) == (4, 3, 64, 96)
    assert bundle.graphs["condition"].output_shape("cond_mean", {"defocus_map": (2, 1, 8, 8)}) == (2, 8)
    with pytest.raises(BundleError, match="no output"):
        restore.output_shape("nope", shapes)


ENTRY = {
    "tensorrt_version": "10.13.0",
    "gpu": "NVIDIA H100 80GB HBM3",
    "compute_capability": "9.0",
    "profile": {"min": [1, 64, 64], "opt": [4, 512, 512], "max": [8, 1024, 1024]},
    "graphs": {
        "estimate": {"file": "estimate.fp16.engine", "onnx_sha256": "aa"},
        "restore": {"file": "restore.fp16.engine", "onnx_sha256": "bb"},
    },
}
SHAS = {"estimate": "aa", "restore": "bb"}
H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
HERE = ("10.13.0.35", H100)


def test_check_engine_entry_accepts_matching_engine():
    check_engine_entry(ENTRY, SHAS, *HERE)
    check_engine_entry(dict(ENTRY, tensorrt_version="10.13.0.35"), SHAS, *HERE)


@pytest.mark.parametrize(
    "level,gpu,capability,ok",
    [
        ("same_compute_capability", "NVIDIA H100 PCIe", "9.0", True),
        ("same_compute_capability", "NVIDIA A100-SXM4-80GB", "8.0", False),
        ("ampere_plus", "NVIDIA A100-SXM4-80GB", "8.0", True),
        ("ampere_plus", "Tesla T4", "7.5", False),
        ("none", "NVIDIA H100 PCIe", "9.0", False),
    ],
)
def test_check_engine_entry_hardware_compatibility(level, gpu, capability, ok):
    entry = dict(ENTRY, hardware_compatibility=level)
    if ok:
        check_engine_entry(entry, SHAS, "10.13.0.35", GpuInfo(gpu, capability))
    else:
        with pytest.raises(BundleError, match="GPU|compute capability"):
            check_engine_entry(entry, SHAS, "10.13.0.35", GpuInfo(gpu, capability))


@pytest.mark.parametrize(
    "shas,here,message",
    [
        (SHAS, ("10.14.1.48", H100), "built with TensorRT 10.13.0, installed is 10.14.1.48"),
        (SHAS, ("10.1.3", H100), "built with TensorRT 10.13.0, installed is 10.1.3"),
        (SHAS, ("10.13.0.35", GpuInfo("NVIDIA A100-SXM4-80GB", "8.0")), "compute capability 9.0"),
        (SHAS, ("10.13.0.35", GpuInfo("NVIDIA H100 PCIe", "9.0")), "engine built on NVIDIA H100 80GB HBM3"),
        ({"estimate": "aa", "restore": "changed"}, HERE, "restore.fp16.engine is stale"),
        ({"estimate": "aa", "restore": "bb", "condition": "cc"}, HERE, "no 'condition' engine"),
    ],
)
def test_check_engine_entry_refuses_foreign_or_stale(shas, here, message):
    with pytest.raises(BundleError, match=message) as info:
        check_engine_entry(ENTRY, shas, *here, bundle_dir="models/x")
    assert "python -m export.engine --bundle models/x --force" in str(info.value)
    assert "make engine" in str(info.value)


@pytest.mark.parametrize(
    "shape,ok",
    [
        ((1, 64, 64), True),
        ((8, 1024, 1024), True),
        ((4, 512, 700), True),
        ((9, 512, 512), False),
        ((1, 32, 512), False),
        ((1, 512, 1030), False),
    ],
)
def test_check_profile(shape, ok):
    if ok:
        check_profile(ENTRY["profile"], *shape)
    else:
        with pytest.raises(BundleError, match="outside the engine profile"):
            check_profile(ENTRY["profile"], *shape)
