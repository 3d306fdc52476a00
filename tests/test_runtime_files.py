"""``runtime.infer`` loses nothing: inputs never overwritten, no name collisions, reruns
skip earlier outputs, all-or-nothing writes, bounded reads, clean interrupts."""

import errno
import logging
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from common import atomic, signals
from runtime import Deblurrer, batch, image_io
from runtime.infer import main as infer_main

ROOT = Path(__file__).resolve().parent.parent
RNG = np.random.default_rng(5)


def _image(path: Path, shape=(18, 22, 3)) -> bytes:
    cv2.imwrite(str(path), RNG.integers(0, 256, shape).astype(np.uint8))
    return path.read_bytes()


def _infer(bundle, *args) -> int:
    try:
        return infer_main([*map(str, args), "--model", str(bundle), "--threads", "1"])
    except SystemExit as exit_:
        return int(exit_.code)


def _errors(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("error:")], err


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def _files(folder: Path):
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the model is loaded: the refusal must come before."""
    monkeypatch.setattr("runtime.infer.build_deblurrer", lambda args: pytest.fail("model loaded"))


def test_output_naming_rule(tiny_bundle, tmp_path):
    src = tmp_path / "in" / "a.png"
    src.parent.mkdir()
    _image(src)
    assert batch.output_paths(src, None, None) == (
        src.parent / "a_deblurred.png",
        src.parent / "a_defocus.png",
        src.parent / "a_defocus_raw.tif",
        src.parent / "a_compare.png",
    )
    out = tmp_path / "out"
    assert batch.output_paths(src, None, out, ".tif").deblurred == out / "a_deblurred.tif"
    assert batch.output_paths(src, tmp_path / "x.jpg", None)[1:] == (
        tmp_path / "x_defocus.png",
        tmp_path / "x_defocus_raw.tif",
        tmp_path / "x_compare.png",
    )
    assert _infer(tiny_bundle[0], src, "--output-dir", out, "-q") == 0
    assert _infer(tiny_bundle[0], src, "-q") == 0
    assert _files(out) == ["a_deblurred.png"] and _files(src.parent) == ["a.png", "a_deblurred.png"]


def test_output_onto_the_input_is_refused(tiny_bundle, tmp_path, capsys, no_model):
    src = tmp_path / "photo.jpg"
    original = _image(src)
    assert _infer(tiny_bundle[0], src, "-o", src) == 2
    (line,), _ = _errors(capsys)
    assert line == (
        f"error: {src} is an input: refusing to overwrite it (name another output, or use --output-dir)"
    )
    assert src.read_bytes() == original and _files(tmp_path) == ["photo.jpg"]


def test_output_onto_another_input_is_refused(tiny_bundle, tmp_path, capsys, no_model):
    _image(tmp_path / "a.png")
    _image(tmp_path / "a_deblurred.png")
    assert _infer(tiny_bundle[0], tmp_path / "a.png", tmp_path / "a_deblurred.png") == 2
    (line,), _ = _errors(capsys)
    assert f"{tmp_path / 'a_deblurred.png'} is an input" in line


@pytest.mark.parametrize("output_dir", [True, False])
def test_colliding_output_names_are_refused_up_front(tiny_bundle, tmp_path, capsys, no_model, output_dir):
    folder = tmp_path / "shots"
    folder.mkdir()
    _image(folder / "x.png")
    _image(folder / "x.jpg")
    out = tmp_path / "out" if output_dir else folder
    extra = ["--output-dir", out] if output_dir else []
    assert _infer(tiny_bundle[0], folder, *extra) == 2
    (line,), _ = _errors(capsys)
    assert line == (
        f"error: {folder / 'x.jpg'} and {folder / 'x.png'} would both write "
        f"{out / 'x_deblurred.png'}: rename one, or run them with different --output-dir"
    )
    assert _files(folder) == ["x.jpg", "x.png"]
    assert not output_dir or _files(out) == []


def test_rerun_on_a_folder_skips_earlier_outputs(tiny_bundle, tmp_path, caplog):
    folder = tmp_path / "shots"
    folder.mkdir()
    _image(folder / "a.png")
    _image(folder / "b.jpg")
    assert _infer(tiny_bundle[0], folder, "--save-defocus-map", "both") == 0
    first = _files(folder)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="runtime"):
        assert _infer(tiny_bundle[0], folder, "--save-defocus-map", "both") == 0
    assert (
        _files(folder)
        == first
        == [
            "a.png",
            "a_deblurred.png",
            "a_defocus.png",
            "a_defocus_raw.tif",
            "b.jpg",
            "b_deblurred.png",
            "b_defocus.png",
            "b_defocus_raw.tif",
        ]
    )
    assert (
        f"{folder}: skipped 6 earlier outputs of this tool (*_deblurred, *_defocus, *_defocus_raw, *_compare)"
    ) in caplog.messages


def test_other_file_types_in_a_folder_are_reported(tiny_bundle, tmp_path, caplog):
    folder = tmp_path / "shots"
    folder.mkdir()
    _image(folder / "a.png")
    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "anim.gif")
    os.mkfifo(folder / "pipe.png")
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    assert _infer(tiny_bundle[0], folder, "-q") == 0
    assert _warnings(caplog) == [
        f"{folder}: skipped 2 entries that are not regular files (FIFO, device, socket or broken link): "
        "gone.png, pipe.png",
        f"{folder}: skipped 1 file of other types (.gif): anim.gif; this tool reads .png, .jpg, .jpeg, "
        ".tif, .tiff, .webp",
    ]


def test_alpha_into_jpeg_warns(tiny_bundle, tmp_path, caplog):
    src = tmp_path / "rgba.png"
    _image(src, (18, 22, 4))
    assert _infer(tiny_bundle[0], src, "-o", tmp_path / "out.jpg", "-q") == 0
    assert _warnings(caplog) == [
        f"{tmp_path / 'out.jpg'}: JPEG has no alpha channel: the input's "
        "alpha is not written (write .png, .tif or .webp to keep it)"
    ]
    assert cv2.imread(str(tmp_path / "out.jpg"), cv2.IMREAD_UNCHANGED).shape == (18, 22, 3)


@pytest.mark.parametrize("case", ["missing_folder", "onto_folder", "read_only", "unknown_format"])
def test_unwritable_output_is_refused_before_the_model_loads(
    tiny_bundle, tmp_path, capsys, monkeypatch, no_model, case
):
    src = tmp_path / "a.png"
    _image(src)
    target, message = {
        "missing_folder": (tmp_path / "no" / "x.png", f"output folder {tmp_path / 'no'} does not exist"),
        "onto_folder": (tmp_path, f"-o {tmp_path} is a folder: name a file, or use --output-dir"),
        "read_only": (tmp_path / "x.png", f"cannot write to {tmp_path} (Read-only file system)"),
        "unknown_format": (tmp_path / "x.bmp", "unknown output format '.bmp'"),
    }[case]
    if case == "read_only":

        def refuse(*args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

        monkeypatch.setattr(batch.tempfile, "mkstemp", refuse)
    assert _infer(tiny_bundle[0], src, "-o", target) == 2
    (line,), _ = _errors(capsys)
    assert message in line
    assert _files(tmp_path) == ["a.png"]


class _FullDisk:
    """``tempfile`` whose ``mkstemp`` fails (ENOSPC) on the calls numbered in ``fail``."""

    def __init__(self, fail):
        self.calls, self.fail = 0, fail

    def mkstemp(self, *args, **kwargs):
        self.calls += 1
        if self.calls in self.fail:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return tempfile.mkstemp(*args, **kwargs)


def test_failed_image_leaves_none_of_its_files(tiny_bundle, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "shots"
    folder.mkdir()
    _image(folder / "a.png")
    _image(folder / "b.png")
    out = tmp_path / "out"
    monkeypatch.setattr(atomic, "tempfile", _FullDisk(fail={2}))  # a's colour map
    assert _infer(tiny_bundle[0], folder, "--output-dir", out, "--save-defocus-map", "-q") == 1
    lines, _ = _errors(capsys)
    assert lines == [
        f"error: {out / 'a_deblurred.png'}: cannot write to {out} (No space left on device)",
        f"error: 1 of 2 images failed: {folder / 'a.png'}",
    ]
    assert _files(out) == ["b_deblurred.png", "b_defocus.png"]


def test_write_files_removes_what_it_renamed_when_a_rename_fails(tmp_path, monkeypatch):
    replace, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", flaky)
    with pytest.raises(image_io.ImageError, match="Input/output error"):
        image_io.write_files([(tmp_path / "a.png", b"a"), (tmp_path / "b.tif", b"b")])
    assert _files(tmp_path) == []


@pytest.mark.parametrize("case", ["fifo", "dev_zero", "too_big"])
def test_non_regular_and_oversized_files_are_refused_unread(tmp_path, monkeypatch, case):
    if case == "fifo":
        path = tmp_path / "pipe.png"
        os.mkfifo(path)  # opening it for reading would block until a writer comes
        message = re.escape("not a regular file (a FIFO, device or socket)")
    elif case == "dev_zero":
        path, message = Path("/dev/zero"), "not a regular file"
    else:
        path = tmp_path / "big.png"
        _image(path)
        monkeypatch.setattr(image_io, "MAX_FILE_BYTES", 100)
        message = f"{path.stat().st_size} bytes is too large"
    with pytest.raises(image_io.ImageError, match=message):
        image_io.read_image(path)


def _tiff_header(width: int, height: int, kind: int = 4) -> bytes:
    """A little-endian 8-bit grey TIFF whose one IFD declares width x height (SHORT or LONG
    sizes), with the strip tags that let libtiff read the header, but no pixel data."""
    entries = [
        (256, kind, width),
        (257, kind, height),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 8),
        (277, 3, 1),
        (278, 4, height),
        (279, 4, width * height),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, typ, value in entries:
        ifd += struct.pack("<HHI", tag, typ, 1) + struct.pack(
            "<I" if typ == 4 else "<HH", value, *(() if typ == 4 else (0,))
        )
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00\x00\x00\x00"


@pytest.mark.parametrize("kind", [3, 4])
def test_tiff_header_size_is_probed(kind):
    assert image_io.probe_size(_tiff_header(60000, 41000, kind)) == (60000, 41000)


def test_decoder_errors_are_caught_per_file(tiny_bundle, tmp_path, capsys, monkeypatch):
    """A 60000x60000 TIFF header: refused from the header, and OpenCV's own pixel-limit
    error (cv2.error) is one line too; the batch goes on and ends with its summary."""
    folder = tmp_path / "batch"
    folder.mkdir()
    _image(folder / "a.png")
    (folder / "b.tif").write_bytes(_tiff_header(60000, 60000))
    unprobed = _tiff_header(60000, 59000)  # as if the header probe missed it: OpenCV raises
    (folder / "c.tif").write_bytes(unprobed)
    _image(folder / "d.png")
    probe = image_io.probe_size
    monkeypatch.setattr(image_io, "probe_size", lambda data: None if data == unprobed else probe(data))
    assert _infer(tiny_bundle[0], folder, "--output-dir", tmp_path / "out", "-q") == 1
    lines, _ = _errors(capsys)
    assert lines == [
        f"error: {folder / 'b.tif'}: 60000x60000 is too large (limit 30000 px a side, 400 MP)",
        f"error: {folder / 'c.tif'}: too large (limit 30000 px a side, 400 MP)",
        f"error: 2 of 4 images failed: {folder / 'b.tif'}, {folder / 'c.tif'}",
    ]
    assert _files(tmp_path / "out") == ["a_deblurred.png", "d_deblurred.png"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_ends_a_batch_cleanly(tiny_bundle, tmp_path, capsys, monkeypatch, signum):
    folder = tmp_path / "shots"
    folder.mkdir()
    for name in "abc":
        _image(folder / f"{name}.png")
    run, calls = Deblurrer.run, []

    def run_then_signal(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signum)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(Deblurrer, "run", run_then_signal)
    before = signal.getsignal(signal.SIGTERM)
    assert _infer(tiny_bundle[0], folder, "--output-dir", tmp_path / "out", "-q") == 128 + signum
    lines, err = _errors(capsys)
    name = signal.Signals(signum).name
    assert lines == [f"error: interrupted by {name} after 1 of 3 images; the finished outputs are kept"]
    assert "KeyboardInterrupt" not in err
    assert _files(tmp_path / "out") == ["a_deblurred.png"]
    assert signal.getsignal(signal.SIGTERM) == before, "handlers are restored"


def test_stream_sigint_ends_with_one_line(tiny_bundle):
    width, height = 10, 8
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtime.stream",
            "--width",
            str(width),
            "--height",
            str(height),
            "--model",
            str(tiny_bundle[0]),
            "--threads",
            "1",
            "-q",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        proc.stdin.write(bytes(width * height * 3))
        proc.stdin.flush()
        assert len(proc.stdout.read(width * height * 3)) == width * height * 3
        proc.send_signal(signal.SIGINT)  # while it waits for the next frame
        proc.wait(timeout=60)
        err = proc.stderr.read()
    finally:
        proc.kill()
        proc.stdin.close()
    assert proc.returncode == 130
    assert err.decode().splitlines() == ["error: interrupted by SIGINT after 1 frames"]


def test_interrupted_exit_codes():
    assert signals.Interrupted(signal.SIGINT).exit_code == 130
    assert signals.Interrupted(signal.SIGTERM).exit_code == 143
