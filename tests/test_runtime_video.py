"""``python -m runtime.video``: frame rate, audio, bit depth, rotation and frames kept end to end."""

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from runtime import Deblurrer, video
from runtime.video import FFMPEG_MISSING
from runtime.video import main as video_main

needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="ffmpeg / ffprobe not installed"
)
W, H, FPS = 40, 26, 5


def _ffmpeg(*args) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *map(str, args)], check=True)


def _clip(path: Path, pix_fmt: str, rotation: int = 0) -> Path:
    """A 7-frame W x H clip at FPS fps with a sine tone (AAC), optionally rotated."""
    plain = path.with_name(f"plain_{path.name}")
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={W}x{H}:rate={FPS}:duration=1.4",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=1.4",
        "-c:v",
        "libx264",
        "-pix_fmt",
        pix_fmt,
        "-c:a",
        "aac",
        "-shortest",
        plain,
    )
    if not rotation:
        return plain
    if video.has_display_rotation():
        _ffmpeg("-display_rotation", rotation, "-i", plain, "-c", "copy", path)
    else:
        _ffmpeg("-i", plain, "-c", "copy", "-metadata:s:v:0", f"rotate={rotation}", path)
    return path


def _streams(path: Path) -> list:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)["streams"]


def _frames(path: Path, width: int, height: int) -> np.ndarray:
    raw = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-noautorotate",
            "-i",
            str(path),
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def _run(argv, bundle) -> int:
    try:
        return video_main(
            [*map(str, argv), "--model", str(bundle), "--device", "cpu", "--threads", "1", "-q"]
        )
    except SystemExit as exit_:
        return int(exit_.code)


@needs_ffmpeg
def test_keeps_rate_audio_depth_and_rotation(tiny_bundle, tmp_path):
    src = _clip(tmp_path / "in.mp4", "yuv420p10le", rotation=90)
    before = {s["codec_type"]: s for s in _streams(src)}
    assert before["video"]["side_data_list"][0]["rotation"] == 90  # the fixture itself
    out = tmp_path / "out.mp4"
    assert _run([src, out], tiny_bundle[0]) == 0
    after = {s["codec_type"]: s for s in _streams(out)}
    assert after["video"]["avg_frame_rate"] == f"{FPS}/1"
    assert after["video"]["nb_frames"] == before["video"]["nb_frames"] == "7"
    assert after["video"]["pix_fmt"] == "yuv420p10le"
    assert (after["video"]["width"], after["video"]["height"]) == (W, H)
    assert after["video"]["side_data_list"][0]["rotation"] == 90
    assert after["audio"]["codec_name"] == "aac"
    assert after["audio"]["nb_frames"] == before["audio"]["nb_frames"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@needs_ffmpeg
def test_frames_are_the_deblurrers_output(tiny_bundle, tmp_path):
    """A lossless RGB encoder: every written frame equals Deblurrer.run on the decoded frame."""
    src = _clip(tmp_path / "in.mp4", "yuv420p")
    out = tmp_path / "out.mkv"
    assert _run([src, out, "--codec", "libx264rgb", "--crf", "0"], tiny_bundle[0]) == 0
    deblurrer = Deblurrer(tiny_bundle[0], device="cpu", threads=1)
    expected = np.stack([deblurrer.run(frame)[0] for frame in _frames(src, W, H)])
    written = _frames(out, W, H)
    assert written.shape == expected.shape == (7, H, W, 3)
    np.testing.assert_array_equal(written, expected)


def test_missing_ffmpeg_is_one_line(tiny_bundle, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert _run([tmp_path / "in.mp4", tmp_path / "out.mp4"], tiny_bundle[0]) == 2
    assert capsys.readouterr().err == f"error: {FFMPEG_MISSING}\n"


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing", "in.mp4: no such file"),
        ("same", "is the input itself"),
        ("no_folder", "does not exist"),
        ("no_extension", "no extension"),
    ],
)
def test_bad_paths_fail_before_the_model_loads(tiny_bundle, tmp_path, capsys, monkeypatch, case, message):
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(video, "build_deblurrer", lambda args: pytest.fail("model loaded"))
    src = tmp_path / "in.mp4"
    if case != "missing":
        src.write_bytes(b"not looked at")
    out = {
        "missing": tmp_path / "o.mp4",
        "same": src,
        "no_folder": tmp_path / "no" / "o.mp4",
        "no_extension": tmp_path / "o",
    }[case]
    assert _run([src, out], tiny_bundle[0]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and message in line


@needs_ffmpeg
def test_not_a_video_is_one_line(tiny_bundle, tmp_path, capsys):
    src = tmp_path / "in.mp4"
    src.write_text("hello")
    assert _run([src, tmp_path / "o.mp4"], tiny_bundle[0]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {src}: not a readable video")
    assert not (tmp_path / "o.mp4").exists()


@needs_ffmpeg
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_ends_a_video_with_one_line(tiny_bundle, tmp_path, capsys, monkeypatch, signum):
    src = _clip(tmp_path / "in.mp4", "yuv420p")
    run, calls = Deblurrer.run, []

    def run_then_signal(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signum)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(Deblurrer, "run", run_then_signal)
    assert _run([src, tmp_path / "out.mp4"], tiny_bundle[0]) == 128 + signum
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: interrupted by {signal.Signals(signum).name} after 2 frames; {tmp_path / 'out.mp4'} "
        "is not written"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]  # no output, no temporary file
