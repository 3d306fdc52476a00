"""``python -m runtime.infer`` and ``python -m runtime.stream``: outputs, bad input, no torch."""

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime import Deblurrer, image_io
from runtime.infer import main as infer_main

ROOT = Path(__file__).resolve().parent.parent
RNG = np.random.default_rng(0)


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT))


def _image(path: Path, shape=(30, 44, 3), dtype=np.uint8) -> np.ndarray:
    top = np.iinfo(dtype).max
    data = RNG.integers(0, top + 1, shape).astype(dtype)
    cv2.imwrite(str(path), data)
    return data


def _infer(args, bundle) -> int:
    try:
        return infer_main(
            [*map(str, args), "--model", str(bundle), "--device", "cpu", "-q", "--threads", "1"]
        )
    except SystemExit as exit_:
        return int(exit_.code)


def _error_lines(err: str):
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_default_output_name_and_depth(tiny_bundle, tmp_path):
    src = tmp_path / "photo.png"
    _image(src, dtype=np.uint16)
    assert _infer([src], tiny_bundle[0]) == 0
    out = cv2.imread(str(tmp_path / "photo_deblurred.png"), cv2.IMREAD_UNCHANGED)
    assert out.dtype == np.uint16 and out.shape == (30, 44, 3)


def test_float32_tiff_keeps_its_sample_type(tiny_bundle, tmp_path):
    src = tmp_path / "in" / "f.tif"
    src.parent.mkdir()
    cv2.imwrite(str(src), RNG.random((24, 30, 3), dtype=np.float32))
    assert _infer([src.parent, "--output-dir", tmp_path / "out"], tiny_bundle[0]) == 0
    assert _infer([src], tiny_bundle[0]) == 0
    for out in (tmp_path / "in" / "f_deblurred.tif", tmp_path / "out" / "f_deblurred.tif"):
        image = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
        assert image.dtype == np.float32 and image.shape == (24, 30, 3), out
        assert 0.0 <= image.min() and image.max() <= 1.0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f_deblurred.tif"]


@pytest.mark.parametrize("dtype,suffix,name", [(np.float32, ".tif", "x.png"), (np.uint16, ".png", "x.jpg")])
def test_output_format_too_shallow_is_refused_before_the_work(
    tiny_bundle, tmp_path, capsys, monkeypatch, dtype, suffix, name
):
    src = tmp_path / f"in{suffix}"
    cv2.imwrite(str(src), np.zeros((20, 22, 3), dtype))
    monkeypatch.setattr(Deblurrer, "run", lambda *a, **k: pytest.fail("deblurred anyway"))
    assert _infer([src, "-o", tmp_path / name], tiny_bundle[0]) == 1
    (line,) = _error_lines(capsys.readouterr().err)
    assert f"{name}: .{name.split('.')[1]} cannot hold" in line
    assert not (tmp_path / name).exists()


def test_output_dir_with_maps_and_alpha(tiny_bundle, tmp_path):
    src = tmp_path / "in" / "a.png"
    src.parent.mkdir()
    rgba = _image(src, shape=(26, 34, 4))
    grey = tmp_path / "in" / "g.jpg"
    _image(grey, shape=(20, 22))
    out_dir = tmp_path / "out"
    assert _infer([src.parent, "--output-dir", out_dir, "--save-defocus-map", "both"], tiny_bundle[0]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "a_deblurred.png",
        "a_defocus.png",
        "a_defocus_raw.tif",
        "g_deblurred.png",
        "g_defocus.png",
        "g_defocus_raw.tif",
    ]
    out = cv2.imread(str(out_dir / "a_deblurred.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(out[:, :, 3], rgba[:, :, 3])
    assert cv2.imread(str(out_dir / "g_deblurred.png"), cv2.IMREAD_UNCHANGED).shape == (20, 22)
    colour = cv2.imread(str(out_dir / "a_defocus.png"), cv2.IMREAD_UNCHANGED)
    assert colour.shape == (26 + image_io.LEGEND_HEIGHT, 34, 3)
    assert cv2.imread(str(out_dir / "a_defocus_raw.tif"), cv2.IMREAD_UNCHANGED).dtype == np.float32


def test_saved_raw_map_round_trips_through_defocus_map(tiny_bundle, tmp_path):
    src = tmp_path / "x.png"
    _image(src)
    assert (
        _infer(
            [src, "-o", tmp_path / "first.png", "--save-defocus-map", "raw", "--defocus-scale", "0.5"],
            tiny_bundle[0],
        )
        == 0
    )
    raw = tmp_path / "first_defocus_raw.tif"
    assert _infer([src, "-o", tmp_path / "second.png", "--defocus-map", raw], tiny_bundle[0]) == 0
    first = cv2.imread(str(tmp_path / "first.png")).astype(int)
    second = cv2.imread(str(tmp_path / "second.png")).astype(int)
    np.testing.assert_array_equal(first, second)


def test_self_ensemble_option(tiny_bundle, tmp_path):
    src = tmp_path / "e.png"
    data = _image(src)
    assert _infer([src, "--self-ensemble", "4"], tiny_bundle[0]) == 0
    expected, _ = Deblurrer(tiny_bundle[0], threads=1, self_ensemble=4).run(data[:, :, ::-1])
    written = cv2.imread(str(tmp_path / "e_deblurred.png"))[:, :, ::-1]
    np.testing.assert_array_equal(written, expected)


def _bad_case(tmp_path: Path, case: str):
    """(argv without --model, expected message) of one bad-input case."""
    good = tmp_path / "good.png"
    _image(good)
    bad = tmp_path / "bad.png"
    if case == "missing":
        return [bad], "no such file"
    if case == "empty":
        bad.write_bytes(b"")
        return [bad], "empty file"
    if case == "not_image":
        bad.write_text("hello")
        return [bad], "not a readable image"
    if case == "truncated":
        data = good.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
        return [bad], "truncated or corrupt"
    if case == "huge":
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + (50000).to_bytes(4, "big") * 2)
        return [bad], "50000x50000 is too large"
    if case == "unwritable":
        return [good, "-o", tmp_path / "no" / "dir" / "out.png"], "does not exist"
    if case == "two_inputs_one_output":
        return [good, good, "-o", tmp_path / "o.png"], "-o names one output"
    if case == "bad_scale":
        return [good, "--defocus-scale", "-1"], "--defocus-scale must be in [0, 10], got -1.0"
    if case == "bad_ensemble":
        return [good, "--self-ensemble", "3"], "self-ensemble must be one of 1, 2, 4, 8, got 3"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "empty",
        "not_image",
        "truncated",
        "huge",
        "unwritable",
        "two_inputs_one_output",
        "bad_scale",
        "bad_ensemble",
    ],
)
def test_bad_input_gives_one_line_and_no_output(tiny_bundle, tmp_path, capsys, case):
    argv, message = _bad_case(tmp_path, case)
    before = {p for p in tmp_path.rglob("*")}
    assert _infer(argv, tiny_bundle[0]) != 0
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and message in lines[0], lines
    assert {p for p in tmp_path.rglob("*")} == before


@pytest.mark.parametrize(
    "model,message",
    [("model.txt", "is not a model"), ("fake.onnx", "no manifest.json"), ("nowhere", "does not exist")],
)
def test_bad_model_gives_one_line(tmp_path, capsys, model, message):
    src = tmp_path / "x.png"
    _image(src)
    path = tmp_path / model
    if model != "nowhere":
        path.write_text("not a model")
    with pytest.raises(SystemExit) as exit_:
        infer_main([str(src), "--model", str(path), "-q"])
    assert exit_.value.code == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "x_deblurred.png").exists()


def test_batch_continues_past_bad_file(tiny_bundle, tmp_path, capsys):
    folder = tmp_path / "batch"
    folder.mkdir()
    _image(folder / "a.png")
    (folder / "b.png").write_text("broken")
    _image(folder / "c.jpg")
    assert _infer([folder, "--output-dir", tmp_path / "out"], tiny_bundle[0]) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_deblurred.png", "c_deblurred.png"]
    lines = _error_lines(capsys.readouterr().err)
    assert "b.png: not a readable image" in lines[0]
    assert lines[-1] == f"error: 1 of 3 images failed: {folder / 'b.png'}"


def test_runtime_never_imports_torch(tiny_bundle):
    code = (
        "import sys, numpy as np\n"
        "import runtime, runtime.infer, runtime.stream, runtime.tiling, runtime.image_io\n"
        f"deblurrer = runtime.Deblurrer({str(tiny_bundle[0])!r}, threads=1)\n"
        "out, _ = deblurrer.run(np.zeros((20, 26, 3), np.uint8))\n"
        "assert out.shape == (20, 26, 3)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training', 'export'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def _stream(bundle, frames: bytes, width: int, height: int, pix_fmt: str = "rgb24"):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime.stream",
            "--width",
            str(width),
            "--height",
            str(height),
            "--pix-fmt",
            pix_fmt,
            "--model",
            str(bundle),
            "--device",
            "cpu",
            "--threads",
            "1",
            "-q",
        ],
        input=frames,
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )


def test_stream_frames_and_short_last_frame(tiny_bundle):
    width, height = 22, 16
    frames = RNG.integers(0, 256, (3, height, width, 3)).astype(np.uint8)
    result = _stream(tiny_bundle[0], frames.tobytes(), width, height)
    assert result.returncode == 0, result.stderr.decode()
    out = np.frombuffer(result.stdout, np.uint8).reshape(3, height, width, 3)
    deblurrer = Deblurrer(tiny_bundle[0], threads=1)
    for frame, got in zip(frames, out):
        expected, _ = deblurrer.run(frame)
        assert np.abs(expected.astype(int) - got.astype(int)).max() <= 1

    frame_bytes = width * height * 3
    short = _stream(tiny_bundle[0], frames.tobytes()[: 2 * frame_bytes + 100], width, height)
    assert short.returncode == 1
    assert len(short.stdout) == 2 * frame_bytes
    assert _error_lines(short.stderr.decode()) == [
        f"error: stdin ended inside frame 3: got 100 of {frame_bytes} bytes ({width}x{height} uint8 RGB)"
    ]


@pytest.mark.parametrize(
    "width, height, message",
    [
        (0, 10, "must be positive, got 0x10"),
        (30_001, 8, "30001x8 frames are too large (limit 30000 px a side, 400 MP)"),
        (25_000, 20_000, "25000x20000 frames are too large"),
    ],
)
def test_stream_bad_frame_sizes(tiny_bundle, width, height, message):
    result = _stream(tiny_bundle[0], b"\0" * 1000, width, height)
    assert result.returncode == 2 and result.stdout == b""
    (line,) = _error_lines(result.stderr.decode())
    assert message in line


def test_stream_rgb48le(tiny_bundle):
    frame = RNG.integers(0, 65536, (12, 18, 3)).astype("<u2")
    result = _stream(tiny_bundle[0], frame.tobytes(), 18, 12, "rgb48le")
    assert result.returncode == 0, result.stderr.decode()
    got = np.frombuffer(result.stdout, "<u2").reshape(12, 18, 3)
    expected, _ = Deblurrer(tiny_bundle[0], threads=1).run(frame.astype(np.uint16))
    assert np.abs(expected.astype(int) - got.astype(int)).max() <= 1


def test_infer_end_to_end_subprocess(tiny_bundle, tmp_path):
    src = tmp_path / "e.png"
    _image(src)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime.infer",
            str(src),
            "--model",
            str(tiny_bundle[0]),
            "--device",
            "cpu",
            "--threads",
            "1",
        ],
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"backend: openvino \S+ on cpu, (fp32|bf16)\n", result.stderr), result.stderr
    assert image_io.read_image(tmp_path / "e_deblurred.png").rgb.shape == (30, 44, 3)


def test_missing_input_fails_before_the_model_loads(tiny_bundle, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("runtime.infer.build_deblurrer", lambda args: pytest.fail("model loaded"))
    assert _infer([tmp_path / "nowhere", tmp_path / "gone.png"], tiny_bundle[0]) == 1
    lines = _error_lines(capsys.readouterr().err)
    assert lines == [
        f"error: {tmp_path / 'nowhere'}: no such file",
        f"error: {tmp_path / 'gone.png'}: no such file",
        f"error: 2 of 2 images failed: {tmp_path / 'nowhere'}, {tmp_path / 'gone.png'}",
    ]


@pytest.mark.parametrize("many", [False, True])
def test_last_log_line_names_the_output(tiny_bundle, tmp_path, caplog, many):
    for name in ("a.png", "b.png")[: 1 + many]:
        _image(tmp_path / name)
    args = [tmp_path, "--output-dir", tmp_path / "out"] if many else [tmp_path / "a.png"]
    with caplog.at_level("INFO", logger="runtime"):
        assert infer_main([*map(str, args), "--model", str(tiny_bundle[0]), "--device", "cpu"]) == 0
    expected = f"wrote 2 images to {tmp_path / 'out'}/" if many else f"wrote {tmp_path / 'a_deblurred.png'}"
    assert caplog.records[-1].getMessage() == expected


def test_quiet_hides_the_progress_bars(tiny_bundle, tmp_path, capsys):
    for name in ("a.png", "b.png"):
        _image(tmp_path / name, shape=(64, 1200, 3))
    # Enough tiles for the per-image bar too (runtime.infer shows it from 16 tiles).
    assert Deblurrer(tiny_bundle[0], tile=128).count_tiles(64, 1200) >= 16
    assert _infer([tmp_path, "--output-dir", tmp_path / "out", "--tile", "128"], tiny_bundle[0]) == 0
    assert capsys.readouterr().err == ""


def test_save_comparison(tiny_bundle, tmp_path):  # noqa: F811
    src = tmp_path / "c.png"
    data = _image(src, shape=(30, 44, 3), dtype=np.uint16)
    assert _infer([src, "-o", tmp_path / "o.png", "--save-comparison"], tiny_bundle[0]) == 0
    picture = cv2.imread(str(tmp_path / "o_compare.png"), cv2.IMREAD_UNCHANGED)
    assert picture.dtype == np.uint8
    height = image_io.LABEL_HEIGHT + 30 + image_io.LEGEND_HEIGHT
    assert picture.shape == (height, 3 * 44 + 2 * image_io.GAP_PX, 3)
    shown_input = picture[image_io.LABEL_HEIGHT : image_io.LABEL_HEIGHT + 30, :44]
    np.testing.assert_array_equal(shown_input, (data.astype(np.float32) / 257 + 0.5).astype(np.uint8))
    assert not (tmp_path / "o_defocus.png").exists()  # only what was asked for
