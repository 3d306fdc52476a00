"""Engine builder paths that run without TensorRT: profiles, cache keys, refusals, CLI."""

import ast
import subprocess
import sys
import types
from pathlib import Path

import pytest

from common.hashing import sha256_file
from export import engine as export_engine
from export.bundle_writer import engine_file, read_manifest, write_manifest
from export.engine_plan import (
    Profile,
    compute_profile,
    engine_key,
    engines_section,
    input_shapes,
    reusable,
    tensorrt_missing_message,
)
from runtime.bundle import FORMAT, REBUILD_HINT, BundleError, check_engines, load_bundle
from runtime.errors import MissingDependency
from runtime.gpu import GpuInfo, cuda_gpus, import_tensorrt
from tools.typecheck import fix_stub

REPO = Path(__file__).resolve().parents[1]
H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
PROFILE = Profile((1, 64, 64), (4, 512, 512), (8, 1024, 1024))
IMAGE = {"name": "image", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}
DMAP = {"name": "defocus_map", "dtype": "float32", "shape": ["batch", 1, "height", "width"]}
COND = {"name": "cond_mean", "dtype": "float32", "shape": ["batch", 32]}


@pytest.fixture
def bundle(tmp_path):
    """A bundle folder with a manifest and stand-in FP16 ONNX files."""
    graphs = {}
    for name, inputs in (("estimate", [IMAGE]), ("restore", [IMAGE, DMAP, COND])):
        files = {"fp32": f"{name}.onnx", "fp16": f"{name}.fp16.onnx"}
        for file in files.values():
            (tmp_path / file).write_bytes(f"onnx of {file}".encode())
        graphs[name] = {
            "inputs": inputs,
            "outputs": [],
            "files": files,
            "sha256": {p: sha256_file(tmp_path / f) for p, f in files.items()},
        }
    write_manifest(
        tmp_path,
        {
            "format": FORMAT,
            "size_multiple": 2,
            "map_radius_scale_px": 10.0,
            "receptive_field": {"estimate": 40, "restore": 30},
            "graphs": graphs,
        },
    )
    return tmp_path


def _with_engines(bundle: Path, version="10.13.0", gpu=H100, level="none") -> dict:
    """Write stand-in engines for every graph and record them as ``export.engine`` does."""
    manifest = read_manifest(bundle)
    graphs = {}
    for name, graph in manifest["graphs"].items():
        key = engine_key(sha256_file(bundle / graph["files"]["fp16"]), version, gpu, PROFILE, level)
        (bundle / engine_file(name)).write_bytes(f"engine {name}".encode())
        graphs[name] = {
            "file": engine_file(name),
            "onnx_sha256": key["onnx_sha256"],
            "engine_sha256": sha256_file(bundle / engine_file(name)),
        }
    manifest["engines"] = {"fp16": engines_section(key, graphs)}
    write_manifest(bundle, manifest)
    return manifest


# --- profiles -------------------------------------------------------------------


def test_default_profile():
    assert compute_profile(512, 4, 8, 64, 1024, 2) == PROFILE
    assert PROFILE.to_dict() == {"min": [1, 64, 64], "opt": [4, 512, 512], "max": [8, 1024, 1024]}


@pytest.mark.parametrize(
    "args, message",
    [
        ((511, 4, 8, 64, 1024, 2), "--tile 511 must be a positive multiple of the model's size multiple 2"),
        ((512, 4, 8, 63, 1024, 2), "--min-size 63 must be a positive multiple"),
        ((512, 4, 8, 64, 0, 2), "--max-size 0 must be a positive multiple"),
        ((2048, 4, 8, 64, 1024, 2), "need --min-size <= --tile <= --max-size, got 64, 2048, 1024"),
        ((32, 4, 8, 64, 1024, 2), "need --min-size <= --tile <= --max-size, got 64, 32, 1024"),
        ((512, 9, 8, 64, 1024, 2), "need 1 <= --batch <= --max-batch, got 9, 8"),
        ((512, 0, 8, 64, 1024, 2), "need 1 <= --batch <= --max-batch, got 0, 8"),
        ((512, 4, 8, 64, 1024, 0), "size_multiple must be >= 1, got 0"),
    ],
)
def test_profile_argument_checks(args, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        compute_profile(*args)


def test_input_shapes_follow_batch_and_size():
    shapes = input_shapes([IMAGE, DMAP, COND], PROFILE)
    assert shapes["image"] == ((1, 3, 64, 64), (4, 3, 512, 512), (8, 3, 1024, 1024))
    assert shapes["defocus_map"] == ((1, 1, 64, 64), (4, 1, 512, 512), (8, 1, 1024, 1024))
    assert shapes["cond_mean"] == ((1, 32), (4, 32), (8, 32))


# --- cache keys and refusals ----------------------------------------------------


def test_matching_engine_is_reused(bundle):
    manifest = _with_engines(bundle)
    key = engine_key(sha256_file(bundle / "estimate.fp16.onnx"), "10.13.0", H100, PROFILE, "none")
    assert reusable(manifest, bundle, "estimate", key)
    assert check_engines(load_bundle(bundle), "fp16", "10.13.0.35", H100) == {
        name: bundle / f"{name}.fp16.engine" for name in ("estimate", "restore")
    }


@pytest.mark.parametrize(
    "change",
    [
        {"tensorrt_version": "10.14.1"},
        {"gpu": "NVIDIA A100-SXM4-80GB"},
        {"compute_capability": "8.0"},
        {"profile": Profile((1, 64, 64), (4, 256, 256), (8, 1024, 1024)).to_dict()},
        {"hardware_compatibility": "ampere_plus"},
        {"onnx_sha256": "0" * 64},
    ],
)
def test_any_key_change_forces_a_rebuild(bundle, change):
    manifest = _with_engines(bundle)
    key = engine_key(sha256_file(bundle / "estimate.fp16.onnx"), "10.13.0", H100, PROFILE, "none")
    assert not reusable(manifest, bundle, "estimate", {**key, **change})


def test_damaged_engine_is_not_reused(bundle):
    manifest = _with_engines(bundle)
    key = engine_key(sha256_file(bundle / "estimate.fp16.onnx"), "10.13.0", H100, PROFILE, "none")
    (bundle / "estimate.fp16.engine").write_bytes(b"truncated")
    assert not reusable(manifest, bundle, "estimate", key)
    with pytest.raises(BundleError) as info:
        check_engines(load_bundle(bundle), "fp16", "10.13.0", H100)
    assert str(info.value) == (
        "estimate.fp16.engine does not match its sha256 in manifest.json: " + REBUILD_HINT.format(dir=bundle)
    )


@pytest.mark.parametrize(
    "version, gpu, reason",
    [
        ("10.14.1", H100, "engine built with TensorRT 10.13.0, installed is 10.14.1"),
        (
            "10.13.0",
            GpuInfo("NVIDIA L4", "8.9"),
            "engine built for compute capability 9.0 (NVIDIA H100 80GB HBM3), this GPU is 8.9 (NVIDIA L4)",
        ),
    ],
)
def test_foreign_engine_is_refused(bundle, version, gpu, reason):
    """export.verify refuses engines with the runtime's check (was: a second, exact-version copy)."""
    _with_engines(bundle)
    with pytest.raises(BundleError) as info:
        check_engines(load_bundle(bundle), "fp16", version, gpu)
    assert str(info.value) == f"{reason}: " + REBUILD_HINT.format(dir=bundle)


def test_stale_engine_is_refused(bundle):
    manifest = _with_engines(bundle)
    (bundle / "estimate.fp16.onnx").write_bytes(b"re-exported")
    manifest["graphs"]["estimate"]["sha256"]["fp16"] = sha256_file(bundle / "estimate.fp16.onnx")
    write_manifest(bundle, manifest)
    with pytest.raises(BundleError) as info:
        check_engines(load_bundle(bundle), "fp16", "10.13.0", H100)
    assert str(info.value) == (
        "estimate.fp16.engine is stale: its ONNX graph changed since it was "
        "built: " + REBUILD_HINT.format(dir=bundle)
    )


def test_missing_engine_is_refused(bundle):
    with pytest.raises(BundleError, match=r"no fp16 TensorRT engine \(has: none\): rebuild it with"):
        check_engines(load_bundle(bundle), "fp16", "10.13.0", H100)
    _with_engines(bundle)
    (bundle / "restore.fp16.engine").unlink()
    with pytest.raises(BundleError, match="restore.fp16.engine is missing: rebuild it with `make engine`"):
        check_engines(load_bundle(bundle), "fp16", "10.13.0", H100)


# --- CLI with TensorRT replaced by a recording stand-in --------------------------


@pytest.fixture
def fake_trt(monkeypatch):
    """``export.trt_engine`` stand-in that records builds; one H100."""
    builds = []
    module = types.ModuleType("export.trt_engine")
    module.tensorrt_version = lambda: "10.13.0"

    def build_engine(onnx_path, shapes, workspace_bytes, optimization_level, hardware, cache):
        builds.append((Path(onnx_path).name, shapes, workspace_bytes, optimization_level, hardware))
        return f"engine from {Path(onnx_path).name} {shapes}".encode()

    module.build_engine = build_engine
    module.layer_precisions = lambda blob: {"fp16": 7, "fp32": 1}
    monkeypatch.setitem(sys.modules, "export.trt_engine", module)
    monkeypatch.setattr(export_engine, "import_tensorrt", lambda: types.ModuleType("tensorrt"))
    monkeypatch.setattr(export_engine, "cuda_gpus", lambda: [H100])
    return builds


def test_build_records_engines_then_reuses(bundle, fake_trt, capsys):
    assert export_engine.main(["--bundle", str(bundle)]) == 0
    assert [b[0] for b in fake_trt] == ["estimate.fp16.onnx", "restore.fp16.onnx"]
    assert fake_trt[1][1]["cond_mean"] == ((1, 32), (4, 32), (8, 32))
    assert fake_trt[0][2:] == (4 << 30, 3, "none")
    manifest = read_manifest(bundle)
    engines = manifest["engines"]["fp16"]
    assert (engines["tensorrt_version"], engines["gpu"], engines["compute_capability"]) == (
        "10.13.0",
        H100.name,
        "9.0",
    )
    assert engines["profile"] == PROFILE.to_dict() and engines["hardware_compatibility"] == "none"
    for name in ("estimate", "restore"):
        entry = engines["graphs"][name]
        assert entry["engine_sha256"] == sha256_file(bundle / f"{name}.fp16.engine")
        assert entry["onnx_sha256"] == manifest["graphs"][name]["sha256"]["fp16"]
        assert check_engines(load_bundle(bundle), "fp16", "10.13.0", H100)[name].is_file()
    assert export_engine.main(["--bundle", str(bundle)]) == 0
    assert len(fake_trt) == 2 and "estimate: engine matches, reused" in capsys.readouterr().out
    assert export_engine.main(["--bundle", str(bundle), "--force"]) == 0
    assert len(fake_trt) == 4


def test_new_profile_rebuilds(bundle, fake_trt):
    assert export_engine.main(["--bundle", str(bundle)]) == 0
    assert export_engine.main(["--bundle", str(bundle), "--tile", "256", "--max-size", "512"]) == 0
    assert len(fake_trt) == 4
    assert read_manifest(bundle)["engines"]["fp16"]["profile"]["max"] == [8, 512, 512]


def test_no_gpu_is_one_line_exit_3(bundle, fake_trt, monkeypatch, capsys):
    def no_gpu():
        raise MissingDependency("no NVIDIA GPU found (cudaErrorNoDevice): install the NVIDIA driver")

    monkeypatch.setattr(export_engine, "cuda_gpus", no_gpu)
    assert export_engine.main(["--bundle", str(bundle)]) == export_engine.EXIT_MISSING
    assert capsys.readouterr().err == "no NVIDIA GPU found (cudaErrorNoDevice): install the NVIDIA driver\n"
    assert "engines" not in read_manifest(bundle)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--tile", "33"],
            "engine build failed: --tile 33 must be a positive multiple of the model's size multiple 2",
        ),
        (["--batch", "16"], "engine build failed: need 1 <= --batch <= --max-batch, got 16, 8"),
    ],
)
def test_cli_argument_errors(bundle, argv, message, capsys):
    assert export_engine.main(["--bundle", str(bundle), *argv]) == 1
    assert capsys.readouterr().err == message + "\n"


def test_cli_missing_fp16_onnx(bundle, capsys):
    (bundle / "restore.fp16.onnx").unlink()
    assert export_engine.main(["--bundle", str(bundle)]) == 1
    assert capsys.readouterr().err == (
        f"engine build failed: {bundle / 'restore.fp16.onnx'}: missing (run `make export` again)\n"
    )


def test_cli_bad_workspace_is_argparse_error(bundle):
    with pytest.raises(SystemExit) as info:
        export_engine.main(["--bundle", str(bundle), "--workspace-gib", "0"])
    assert info.value.code == 2


@pytest.mark.skipif(import_tensorrt() is not None, reason="TensorRT is installed here")
def test_missing_tensorrt_subprocess(bundle):
    proc = subprocess.run(
        [sys.executable, "-m", "export.engine", "--bundle", str(bundle)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == export_engine.EXIT_MISSING
    assert proc.stderr == tensorrt_missing_message(bundle) + "\n"
    assert proc.stderr.startswith(
        "tensorrt is not installed: pip uninstall -y onnxruntime && pip install -e '.[gpu]'"
    )
    assert "engines" not in read_manifest(bundle)


def test_stubs_namespace_is_not_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    assert import_tensorrt() is None
    monkeypatch.setattr(sys.modules["tensorrt"], "Runtime", object, raising=False)
    assert import_tensorrt() is sys.modules["tensorrt"]


def test_cuda_gpus_without_driver():
    try:
        gpus = cuda_gpus()
    except MissingDependency as exc:
        assert str(exc).startswith(("no NVIDIA GPU found (cudaError", "cuda-python is not installed"))
    else:
        assert gpus and all(g.name and "." in g.compute_capability for g in gpus)


def test_stub_fix_makes_tensorrt_stubs_parse():
    broken = (
        "class A:\n    def f(self, in: list[int], out: list[int]) -> int: ...\n"
        "    def add_scale_nd(self, input: int, shift: Weights = None, power: Weights = None, "
        "channel_axis: int) -> int: ...\n"
    )
    with pytest.raises(SyntaxError):
        ast.parse(broken)
    fixed = ast.parse(fix_stub(broken))
    args = [a.arg for a in fixed.body[0].body[0].args.args]
    assert args == ["self", "in_", "out"]
