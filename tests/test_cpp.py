"""The C++ runtime (cpp/): build, parity with the Python runtime, the C API's error paths, ASan.

The build fetches its headers from Debian (cpp/fetch_deps.sh). Without network the tests
skip with one reason; with ``DEBLUR_REQUIRE_CPP=1`` (set by .ci/run) they fail instead.
"""

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from cpp.capi import ERROR_ARGUMENT, ERROR_BACKEND, ERROR_BUNDLE, OK, CApi, image_of
from runtime import Deblurrer
from runtime.errors import DeblurError
from runtime.validate import map_range_warning
from training.metrics import psnr

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "models" / "default"
FETCH_FAILED = 3  # cpp/build.sh's exit status when the dependencies cannot be fetched


def build(folder: str, *cmake_args: str) -> Path:
    """Run cpp/build.sh into build/<folder>; skip (or fail where required) without network."""
    out = ROOT / "build" / folder
    proc = subprocess.run(
        ["bash", str(ROOT / "cpp" / "build.sh"), str(out), sys.executable, *cmake_args],
        capture_output=True,
        text=True,
    )
    if proc.returncode == FETCH_FAILED:
        reason = "C++ dependencies cannot be fetched from the Debian mirror (no network?)"
        if os.environ.get("DEBLUR_REQUIRE_CPP") == "1":
            pytest.fail(f"{reason}, and DEBLUR_REQUIRE_CPP=1:\n{proc.stderr}")
        pytest.skip(reason)
    assert proc.returncode == 0, f"C++ build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return out


@pytest.fixture(scope="module")
def cpp_build() -> Path:
    return build("cpp")


@pytest.fixture(scope="module")
def capi(cpp_build) -> CApi:
    return CApi(cpp_build / "libdeblur.so")


@pytest.fixture(scope="module")
def handles(capi):
    """Model handles by (bundle, tile), destroyed at the end."""
    made = {}

    def get(bundle, tile):
        if (bundle, tile) not in made:
            status, handle = capi.create(bundle, tile=tile, threads=1)
            assert status == OK, capi.error()
            made[(bundle, tile)] = handle
        return made[(bundle, tile)]

    yield get
    for handle in made.values():
        capi.destroy(handle)


def wide_image(path: Path) -> np.ndarray:
    """A 397 x 599 crop of a sample (odd sizes: padded), several tiles of 192 px both ways."""
    rgb = cv2.cvtColor(cv2.imread(str(ROOT / "samples" / "coffee_blurry.png")), cv2.COLOR_BGR2RGB)
    crop = np.ascontiguousarray(rgb[:397, :599])
    cv2.imwrite(str(path), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    return crop


@pytest.mark.parametrize("case", ["sample", "wide"])
def test_cli_matches_runtime_infer(cpp_build, tmp_path, case):
    """deblur_cpp and python -m runtime.infer on the same PNG and tile: >= 50 dB."""
    if case == "sample":
        src, tile = ROOT / "samples" / "astronaut_blurry.png", 1024
    else:
        src, tile = tmp_path / "wide.png", 192
        wide_image(src)
    cpp_out, py_out = tmp_path / "cpp.png", tmp_path / "py.png"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cli = subprocess.run(
        [
            str(cpp_build / "deblur_cpp"),
            str(DEFAULT),
            str(src),
            str(cpp_out),
            "--tile",
            str(tile),
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert cli.returncode == 0, cli.stderr
    py = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime.infer",
            str(src),
            "-o",
            str(py_out),
            "--tile",
            str(tile),
            "--threads",
            "1",
            "--backend",
            "onnxruntime",
            "--device",
            "cpu",
            "-q",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert py.returncode == 0, py.stderr
    a, b = cv2.imread(str(cpp_out)), cv2.imread(str(py_out))
    assert a.shape == b.shape == cv2.imread(str(src)).shape
    assert psnr(a, b, data_range=255) >= 50.0
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


@pytest.fixture(params=["default", "tiny_sft", "tiny_concat"])
def bundle(request):
    """Bundles with and without the pooled condition (cond_mean), and other receptive fields."""
    if request.param == "default":
        return DEFAULT
    return request.getfixturevalue("tiny_bundle" if request.param == "tiny_sft" else "concat_bundle")[0]


def test_c_api_matches_deblurrer(capi, handles, bundle, tmp_path):
    """float32 and uint8 through the C API equal Deblurrer.run (same ORT) to float rounding."""
    tile = 192
    image = wide_image(tmp_path / "wide.png")
    deblurrer = Deblurrer(bundle, backend="onnxruntime", tile=tile, threads=1)
    handle = handles(bundle, tile)
    info = capi.info(handle)
    assert (info.tile, info.estimate_tile) == (deblurrer.tile, deblurrer.estimate_tile)
    assert info.size_multiple == deblurrer.bundle.size_multiple
    assert info.map_radius_scale_px == deblurrer.bundle.map_radius_scale_px
    assert bool(info.uses_pooling) == deblurrer.bundle.uses_pooling
    for grid_pass, overlap in (("restore", info.overlap), ("estimate", info.estimate_overlap)):
        assert overlap == deblurrer.pipeline.overlap_for(grid_pass)
    as_float = image.astype(np.float32) / np.float32(255)
    for source in (as_float, image):
        want, want_map = deblurrer.run(source)
        status, got, got_map = capi.run(handle, source)
        assert status == OK, capi.error()
        assert got.dtype == source.dtype and got.shape == want.shape
        assert np.abs(got_map - want_map).max() <= 1e-5
        tolerance = 1e-5 if got.dtype == np.float32 else 1
        assert np.abs(got.astype(np.float32) - want.astype(np.float32)).max() <= tolerance


@pytest.mark.parametrize("passes", [2, 8])
def test_c_api_self_ensemble_matches_deblurrer(capi, handles, bundle, tmp_path, passes):
    """Self-ensemble through the C API: the copies' combined map and averaged outputs equal
    Deblurrer(self_ensemble=N) on a padded image that is not square (transposed copies)."""
    tile = 192
    image = np.ascontiguousarray(wide_image(tmp_path / "wide.png")[:203, :257])
    deblurrer = Deblurrer(bundle, backend="onnxruntime", tile=tile, threads=1, self_ensemble=passes)
    status, handle = capi.create(bundle, tile=tile, threads=1)
    assert status == OK, capi.error()
    try:
        assert capi.set_self_ensemble(handle, passes) == OK, capi.error()
        want, want_map = deblurrer.run(image)
        status, got, got_map = capi.run(handle, image)
        assert status == OK, capi.error()
        assert np.abs(got_map - want_map).max() <= 1e-5
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
        # A given map: every copy restores from it, scaled, and it comes back as used.
        given = np.ascontiguousarray(want_map)  # the runtime returns a view of its padded map
        status, got, got_map = capi.run(handle, image, 1.5, given)
        want, used = deblurrer.run(image, 1.5, given)
        assert status == OK and np.abs(got.astype(int) - want.astype(int)).max() <= 1
        np.testing.assert_allclose(got_map, used, rtol=1e-6)
        assert capi.set_self_ensemble(handle, 1) == OK
        assert np.abs(capi.run(handle, image)[1].astype(int) - want.astype(int)).max() > 1  # one pass differs
    finally:
        capi.destroy(handle)


@pytest.mark.parametrize("passes", [0, 3, 16])
def test_c_api_bad_self_ensemble(capi, handles, passes):
    handle = handles(DEFAULT, 192)
    assert capi.set_self_ensemble(handle, passes) == ERROR_ARGUMENT
    assert capi.error() == f"self-ensemble must be one of 1, 2, 4, 8, got {passes}"
    assert capi.set_self_ensemble(None, 2) == ERROR_ARGUMENT and capi.error() == "model is NULL"
    assert capi.run(handle, np.full((40, 52, 3), 0.5, np.float32))[0] == OK  # still one pass, still works


def test_c_api_scale_and_supplied_map(capi, handles, tmp_path):
    """--defocus-scale and a supplied map, as Deblurrer.run does them."""
    image = wide_image(tmp_path / "wide.png").astype(np.float32) / np.float32(255)
    deblurrer = Deblurrer(DEFAULT, backend="onnxruntime", tile=192, threads=1)
    handle = handles(DEFAULT, 192)
    rows = np.linspace(0.0, 1.5, image.shape[0], dtype=np.float32)
    supplied = np.ascontiguousarray(np.repeat(rows[:, None], image.shape[1], axis=1))
    for scale, dmap in ((0.6, None), (1.4, supplied)):
        want, want_map = deblurrer.run(image, defocus_scale=scale, defocus_map=dmap)
        status, got, got_map = capi.run(handle, image, scale=scale, dmap=dmap)
        assert status == OK, capi.error()
        assert np.abs(got_map - want_map).max() <= 1e-5
        assert np.abs(got - want).max() <= 1e-5
    # The supplied map changes the output, and comes back scaled.
    np.testing.assert_array_equal(got_map, supplied * np.float32(1.4))
    assert np.abs(got - capi.run(handle, image)[1]).max() > 0.01


def test_c_api_warns_beyond_the_trained_range(capi, handles):
    """A map as used beyond map_max warns with runtime.validate's text; within it, or an
    estimate at scale 1, does not."""
    handle = handles(DEFAULT, 192)
    info = capi.info(handle)
    bundle = Deblurrer(DEFAULT, backend="onnxruntime", threads=1).bundle
    assert info.map_max == bundle.map_max
    image = np.random.default_rng(2).uniform(0, 1, (40, 52, 3)).astype(np.float32)
    inside = np.full(image.shape[:2], 0.8 * bundle.map_max, np.float32)
    for scale, dmap, beyond in ((1.0, inside, False), (1.5, inside, True), (1.0, None, False)):
        assert capi.run(handle, image, scale=scale, dmap=dmap)[0] == OK, capi.error()
        used = inside * np.float32(scale)
        expected = map_range_warning(used, bundle.map_max, bundle.map_radius_scale_px) if beyond else None
        assert capi.warning(handle) == (expected or "")
        assert (expected is not None) == beyond


def test_c_api_clips_float_slack(capi, handles):
    """float32 samples within 0.01 of [0, 1] are clipped (runtime.validate's FLOAT_SLACK)."""
    handle = handles(DEFAULT, 192)
    image = np.random.default_rng(1).uniform(-0.008, 1.008, (40, 52, 3)).astype(np.float32)
    status, got, got_map = capi.run(handle, image)
    assert status == OK, capi.error()
    status, want, want_map = capi.run(handle, image.clip(0.0, 1.0))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_map, want_map)


def test_c_api_missing_bundle(capi, tmp_path):
    status, handle = capi.create(tmp_path / "nowhere")
    assert (status, handle) == (ERROR_BUNDLE, None)
    assert "does not exist" in capi.error()
    status, _ = capi.create(tmp_path)
    assert status == ERROR_BUNDLE and "no manifest.json" in capi.error()


def test_c_api_corrupt_onnx(capi, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT, bundle)
    (bundle / "restore.onnx").write_bytes(b"\x08\x07not a protobuf" * 50)
    status, handle = capi.create(bundle)
    assert (status, handle) == (ERROR_BACKEND, None)
    assert capi.error().startswith(f"ONNX Runtime cannot load {bundle / 'restore.onnx'}: ")


def test_c_api_bad_manifest(capi, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT, bundle)
    text = (bundle / "manifest.json").read_text()
    (bundle / "manifest.json").write_text(text.replace('"size_multiple": 2', '"size_multiple": 0'))
    status, _ = capi.create(bundle)
    assert status == ERROR_BUNDLE and "size_multiple 0 must be in [1, 256]" in capi.error()
    (bundle / "manifest.json").write_text(text[:100])
    status, _ = capi.create(bundle)
    assert status == ERROR_BUNDLE and "not valid JSON" in capi.error()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"tile": 7}, "tile 7 must be a positive multiple of 2"),
        ({"tile": 64}, "tile 64 (estimate tiles: 128 px) must exceed the 'estimate' overlap of 192 px"),
        ({"tile": 180, "overlap": 180}, "tile 180 must exceed the 'restore' overlap of 180 px"),
        ({"overlap": 10}, "overlap 10 is below"),
        ({"tile_batch": 0}, "tile batch must be >= 1"),
        ({"threads": -2}, "threads must be >= 0"),
        ({"precision": b"int4"}, "precision must be fp32 or fp16"),
    ],
)
def test_c_api_bad_options(capi, options, message):
    status, handle = capi.create(DEFAULT, **options)
    assert (status, handle) == (ERROR_ARGUMENT, None)
    assert message in capi.error()


def test_c_api_bad_buffers(capi, handles):
    """Wrong sizes, dtypes and non-finite values: an error code and message, never a crash."""
    handle = handles(DEFAULT, 192)
    image = np.full((40, 52, 3), 0.5, np.float32)
    checks = [
        (dict(out=np.empty((40, 51, 3), np.float32)), "output is 40 x 51, the image is 40 x 52"),
        (dict(map_out=np.empty((40, 50), np.float32)), "map output buffer holds"),
        (dict(dmap=np.zeros((40, 52), np.float64)), "defocus map buffer holds"),
        (dict(scale=float("nan")), "defocus scale must be in [0, 10], got nan"),
        (dict(scale=-1.0), "defocus scale must be in [0, 10], got -1"),
        (dict(scale=10.5), "defocus scale must be in [0, 10], got 10.5"),
        (
            dict(dmap=np.where(np.eye(40, 52) > 0, np.inf, 0).astype(np.float32)),
            "defocus map has 40 non-finite values",
        ),
        (dict(dmap=np.full((40, 52), -0.5, np.float32)), "defocus map has negative values"),
        (
            dict(dmap=np.full((40, 52), 6.0, np.float32), scale=2.0),
            "defocus map reaches 12 map units as used",
        ),
    ]
    for kwargs, message in checks:
        status = capi.run(handle, image, **kwargs)[0]
        assert status == ERROR_ARGUMENT and message in capi.error(), (kwargs, capi.error())
    nan_image = image.copy()
    nan_image[3, 4, 1] = np.nan
    assert capi.run(handle, nan_image)[0] == ERROR_ARGUMENT and "image has 1 non-finite" in capi.error()
    assert capi.run(handle, image * 3)[0] == ERROR_ARGUMENT
    assert "samples in [1.5, 1.5]; expected [0, 1]" in capi.error()
    wrong = image_of(image)
    wrong.size_bytes -= 4
    out = np.empty_like(image)
    out_ref = ctypes.byref(image_of(out))
    status = capi.lib.deblur_run(handle, ctypes.byref(wrong), 1.0, None, 0, out_ref, None, 0)
    assert status == ERROR_ARGUMENT and "input buffer holds 24956 bytes" in capi.error()
    status = capi.lib.deblur_run(None, ctypes.byref(image_of(image)), 1.0, None, 0, out_ref, None, 0)
    assert status == ERROR_ARGUMENT and "model is NULL" in capi.error()
    # The binding refuses strided views, which the library would read as other pixels.
    for kwargs, what in (
        (dict(image=np.full((40, 104, 3), 0.5, np.float32)[:, ::2]), "image"),
        (dict(image=image, dmap=np.zeros((52, 40), np.float32).T), "defocus map"),
        (dict(image=image, map_out=np.empty((40, 104), np.float32)[:, ::2]), "map output"),
    ):
        with pytest.raises(ValueError, match=f"{what} must be C-contiguous"):
            capi.run(handle, **kwargs)
    # The handle still works after the refusals.
    assert capi.run(handle, image)[0] == OK and capi.error() == ""


def test_cli_errors(cpp_build, tmp_path):
    """One error line and exit 1 for a bad image, 2 for bad usage or model; no output left."""
    cli = str(cpp_build / "deblur_cpp")
    sample = str(ROOT / "samples" / "coffee_blurry.png")
    out = tmp_path / "out.png"
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    cases = [
        ([str(DEFAULT), str(tmp_path / "bad.png"), str(out)], 1, "not a readable image"),
        ([str(DEFAULT), str(tmp_path / "missing.png"), str(out)], 1, "no such file"),
        ([str(tmp_path), sample, str(out)], 2, "no manifest.json"),
        ([str(DEFAULT), sample, str(out), "--tile", "x"], 2, "not a number"),
        ([str(DEFAULT), sample, str(tmp_path / "o.jpg")], 2, "must be a .png"),
        ([str(DEFAULT), sample, str(out), "--self-ensemble", "3"], 2, "self-ensemble must be one of"),
    ]
    for args, code, message in cases:
        proc = subprocess.run([cli, *args], capture_output=True, text=True)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == code and len(errors) == 1 and message in errors[0], proc.stderr
        assert list(tmp_path.glob("*out.png*")) == [] and not (tmp_path / "o.jpg").exists()


def test_asan_tiling(tmp_path):
    """The CLI built with -fsanitize=address over a multi-tile image and its transposed copy:
    no error reported."""
    out = build("cpp-asan", "-DDEBLUR_ASAN=ON")
    src = tmp_path / "wide.png"
    wide_image(src)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=23", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            str(out / "deblur_cpp"),
            str(DEFAULT),
            str(src),
            str(tmp_path / "out.png"),
            "--tile",
            "192",
            "--threads",
            "1",
            "--tile-batch",
            "3",
            "--self-ensemble",
            "2",  # a transposed copy of the non-square image too
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0 and "AddressSanitizer" not in proc.stderr, proc.stderr[-4000:]
    assert cv2.imread(str(tmp_path / "out.png")).shape == (397, 599, 3)


def test_benchmark_runner(cpp_build):
    """The cpp-ort benchmark row runs the C API on the default tiled path."""
    from benchmarks.backends import BY_NAME
    from benchmarks.runners import DEFAULT_TILE, make_runner

    runner = make_runner(BY_NAME["cpp-ort"], None, DEFAULT, 1)
    image = np.random.default_rng(2).uniform(0, 1, (70, 90, 3)).astype(np.float32)
    want, _ = Deblurrer(DEFAULT, backend="onnxruntime", tile=DEFAULT_TILE, threads=1).run(image)
    np.testing.assert_array_equal(runner(image), want)
    assert f"tile {DEFAULT_TILE}" in runner.description


@pytest.fixture(scope="module")
def small_deblurrer():
    return Deblurrer(DEFAULT, backend="onnxruntime", tile=192, threads=1)


@pytest.mark.parametrize(
    "case",
    [
        "scale nan",
        "scale -1",
        "scale 10.5",
        "map nan",
        "map -0.5",
        "map huge",
        "image nan",
        "image 1.5",
        "image -0.02",
        "ok: scale 10",
        "ok: image 1.008",
    ],
)
def test_c_api_input_rules_are_runtime_validate(capi, handles, small_deblurrer, case):
    """The C API refuses exactly what runtime.validate refuses (and accepts the rest alike)."""
    image = np.full((40, 52, 3), 0.5, np.float32)
    scale, dmap = 1.0, None
    kind, _, value = case.removeprefix("ok: ").partition(" ")
    number = float(value) if value != "huge" else 20.0
    if kind == "scale":
        scale = number
    elif kind == "map":
        dmap = np.full((40, 52), number, np.float32)
    else:
        image[5, 7, 2] = number
    try:
        small_deblurrer.run(image, defocus_scale=scale, defocus_map=dmap)
        python_refuses = False
    except DeblurError:
        python_refuses = True
    status = capi.run(handles(DEFAULT, 192), image, scale=scale, dmap=dmap)[0]
    assert python_refuses == (not case.startswith("ok"))
    assert status == (OK if case.startswith("ok") else ERROR_ARGUMENT), capi.error()
