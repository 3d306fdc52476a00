"""The validation layer (``runtime.validate``): one refusal, worded the same by the API,
``runtime.infer`` and ``runtime.stream``, for bad samples, maps, scales, tiling and bundles."""

import json
import logging
import shutil

import cv2
import numpy as np
import pytest

from runtime import Deblurrer, load_bundle
from runtime.backend import create_backend
from runtime.errors import BackendError, BundleError, ImageError
from runtime.infer import main as infer_main
from runtime.stream import main as stream_main

RNG = np.random.default_rng(3)


@pytest.fixture(scope="module")
def deblurrer(tiny_bundle):
    return Deblurrer(tiny_bundle[0], threads=1)


def _float_image(shape=(20, 26, 3)) -> np.ndarray:
    return RNG.random(shape, dtype=np.float32)


def _exit_code(main, argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:
        return int(exit_.code)


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and "RuntimeWarning" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    "value,message",
    [
        (np.nan, "non-finite float32 samples"),
        (np.inf, "non-finite float32 samples"),
        (1e6, r"samples in \[.*\]; expected \[0, 1\]"),
        (-0.5, r"expected \[0, 1\]"),
    ],
)
def test_bad_float_samples_are_refused(deblurrer, value, message):
    image = _float_image()
    image[2:12, 3:13] = value
    with pytest.raises(ImageError, match=message):
        deblurrer.run(image)


def test_float_overshoot_within_slack_is_clipped(deblurrer):
    image = _float_image()
    image[0, 0] = 1.005
    image[1, 1] = -0.004
    got, _ = deblurrer.run(image)
    expected, _ = deblurrer.run(np.clip(image, 0.0, 1.0))
    np.testing.assert_array_equal(got, expected)
    assert image[0, 0, 0] == np.float32(1.005), "the caller's array is not modified"


@pytest.mark.parametrize("scale", [np.nan, np.inf, 1e30, -1.0, 10.5])
def test_bad_defocus_scale_is_refused(deblurrer, scale):
    with pytest.raises(ImageError, match=r"--defocus-scale must be in \[0, 10\]"):
        deblurrer.run(_float_image(), defocus_scale=scale)


@pytest.mark.parametrize(
    "fill,message",
    [
        (np.nan, "non-finite values"),
        (np.inf, "non-finite values"),
        (1e6, "over 10: 10 times the model's trained range of 1"),
        (-5.0, "negative values"),
    ],
)
def test_bad_user_map_is_refused(deblurrer, fill, message):
    dmap = np.full((20, 26), 0.3, np.float32)
    dmap[4:14, 4:14] = fill
    with pytest.raises(ImageError, match=message):
        deblurrer.run(_float_image(), defocus_map=dmap)


def test_map_beyond_trained_range_warns_once(tiny_bundle, caplog):
    deblurrer = Deblurrer(tiny_bundle[0], threads=1)
    dmap = np.full((20, 26), 2.0, np.float32)
    with caplog.at_level(logging.WARNING, logger="runtime"):
        deblurrer.run(_float_image(), defocus_map=dmap)
        deblurrer.run(_float_image(), defocus_map=dmap)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "defocus map reaches 2 map units (20 px blur radius), beyond the model's "
        "trained range of 1 (10 px): expect artefacts"
    ]
    with pytest.raises(ImageError, match="reaches 12 map units as used"):
        deblurrer.run(_float_image(), defocus_map=dmap, defocus_scale=6.0)


def test_non_finite_model_output_is_refused(tiny_bundle):
    deblurrer = Deblurrer(tiny_bundle[0], threads=1)
    run = deblurrer.pipeline.run

    def poisoned(graph, inputs):
        outputs = run(graph, inputs)
        if graph == "restore":
            outputs["deblurred"][0, 0, 0, 0] = np.nan
        return outputs

    deblurrer.pipeline.run = poisoned
    with pytest.raises(BackendError, match="1 non-finite output samples"):
        deblurrer.run(np.zeros((20, 26, 3), np.uint8))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(tile=0), "--tile must be an integer >= 1, got 0"),
        (dict(tile=-64), "--tile must be an integer >= 1, got -64"),
        (dict(tile_batch=0), "--tile-batch must be an integer >= 1, got 0"),
        (dict(tile_batch=-3), "--tile-batch must be an integer >= 1, got -3"),
        (dict(overlap=-2), "--overlap must be an integer >= 0, got -2"),
    ],
)
def test_nonsense_tiling_is_refused_not_default(tiny_bundle, kwargs, message):
    with pytest.raises(BackendError, match=message):
        Deblurrer(tiny_bundle[0], threads=1, **kwargs)


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(tiny_bundle[0], folder)
    return folder


def _set(folder, key, value):
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    data[key] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("size_multiple", 0, r"size_multiple 0 must be in \[1, 256\]"),
        ("size_multiple", -2, r"size_multiple -2 must be in \[1, 256\]"),
        ("size_multiple", 1e9, "size_multiple 1000000000 must be in"),
        ("map_radius_scale_px", 0, "map_radius_scale_px 0.0 must be finite and > 0"),
        ("map_radius_scale_px", "nan", "map_radius_scale_px nan must be finite and > 0"),
        ("receptive_field", {"estimate": -1, "restore": 5}, "receptive_field needs 'estimate' >= 0"),
        ("receptive_field", {"estimate": 9}, "receptive_field needs 'restore' >= 0"),
        ("map_max", 0, "map_max 0.0 must be finite and > 0"),
        ("map_max", "inf", "map_max inf must be finite and > 0"),
        ("map_max", [1, 2], "missing or bad key"),
    ],
)
def test_impossible_bundle_fields_are_refused(bundle_copy, key, value, message):
    _set(bundle_copy, key, value)
    with pytest.raises(BundleError, match=message) as info:
        load_bundle(bundle_copy)
    assert "\n" not in str(info.value)


def test_manifest_map_max_sets_the_trained_range(bundle_copy):
    _set(bundle_copy, "map_max", 2.5)
    assert load_bundle(bundle_copy).map_max == 2.5


def test_explicit_cuda_without_gpu_is_refused(tiny_bundle):
    with pytest.raises(BackendError, match="no CUDAExecutionProvider here .* use --device cpu or auto"):
        create_backend(load_bundle(tiny_bundle[0]), "onnxruntime", "cuda", threads=1)


# The command lines: the same words, exit 2 for bad usage or model, before any work.


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "in.png"
    cv2.imwrite(str(path), RNG.integers(0, 256, (16, 18, 3)).astype(np.uint8))
    return path


_USAGE = [
    (["--defocus-scale", "nan"], "--defocus-scale must be in [0, 10], got nan"),
    (["--defocus-scale", "inf"], "--defocus-scale must be in [0, 10], got inf"),
    (["--defocus-scale", "1e30"], "--defocus-scale must be in [0, 10], got 1e+30"),
    (["--defocus-scale", "-1"], "--defocus-scale must be in [0, 10], got -1.0"),
    (["--tile", "0"], "--tile must be an integer >= 1, got 0"),
    (["--tile-batch", "0"], "--tile-batch must be an integer >= 1, got 0"),
    (["--tile-batch", "-3"], "--tile-batch must be an integer >= 1, got -3"),
    (["--device", "cuda"], "no CUDAExecutionProvider here"),
]


@pytest.mark.parametrize("extra,message", _USAGE)
def test_infer_bad_usage_exits_2(tiny_bundle, png, capsys, extra, message):
    argv = [png, "--model", tiny_bundle[0], "--threads", "1", "-q", *extra]
    assert _exit_code(infer_main, argv) == 2
    assert message in _one_error(capsys)
    assert not (png.parent / "in_deblurred.png").exists()


@pytest.mark.parametrize("extra,message", _USAGE + [(["--tile-batch", "-1"], "got -1")])
def test_stream_bad_usage_exits_2(tiny_bundle, capsys, extra, message):
    argv = ["--width", 8, "--height", 8, "--model", tiny_bundle[0], "--threads", "1", "-q", *extra]
    assert _exit_code(stream_main, argv) == 2
    assert message in _one_error(capsys)


@pytest.mark.parametrize("main", [infer_main, stream_main])
def test_bad_model_exits_2_in_infer_and_stream(bundle_copy, png, capsys, main):
    _set(bundle_copy, "size_multiple", 0)
    argv = ([png] if main is infer_main else ["--width", 8, "--height", 8]) + ["--model", bundle_copy]
    assert _exit_code(main, argv) == 2
    assert "size_multiple 0 must be in [1, 256]" in _one_error(capsys)


@pytest.mark.parametrize(
    "fill,message", [(np.nan, "non-finite values"), (1e6, "over 10"), (-5.0, "negative values")]
)
def test_infer_bad_defocus_map_file(tiny_bundle, png, tmp_path, capsys, fill, message):
    dmap = np.full((16, 18), 0.3, np.float32)
    dmap[2:12, 2:12] = fill
    cv2.imwrite(str(tmp_path / "map.tif"), dmap)
    argv = [png, "--defocus-map", tmp_path / "map.tif", "--model", tiny_bundle[0], "--threads", "1"]
    assert _exit_code(infer_main, argv) == 1
    line = _one_error(capsys)
    assert line.startswith(f"error: {png}: defocus map has") or "reaches" in line
    assert message in line
    assert not (tmp_path / "in_deblurred.png").exists()


def test_infer_nan_float_tiff_is_refused(tiny_bundle, tmp_path, capsys):
    image = _float_image((16, 18, 3))
    image[3:13, 3:13] = np.nan
    src = tmp_path / "nan.tif"
    cv2.imwrite(str(src), image)
    assert _exit_code(infer_main, [src, "--model", tiny_bundle[0], "--threads", "1", "-q"]) == 1
    assert _one_error(capsys) == (
        f"error: {src}: image has 300 non-finite float32 samples (NaN or "
        "Inf); expected finite values in [0, 1]"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.tif"]
