"""Deblur a video file: ffprobe, then ffmpeg -> ``runtime.stream`` -> ffmpeg.

    python -m runtime.video IN OUT [--codec libx264] [--crf 18] [model options]
    defocus-video IN OUT                     (the same, installed as a command)

Keeps what the input says about itself:

- frame rate: the encoder reads the frames at the input's average frame rate;
- audio: every audio stream is copied, not re-encoded (OUT's container must hold it);
- bit depth: frames cross the network as ``rgb24`` for 8-bit pixel formats and as
  ``rgb48le`` for deeper ones, and are encoded back in the input's pixel format
  where the encoder supports it (``libx264``: 8 and 10 bit);
- rotation: frames are deblurred as stored and OUT gets the input's rotation
  metadata (``-display_rotation`` where ffmpeg has it, 6.1 and later; older
  ffmpeg: a stream-copy pass with the ``rotate`` tag).

Colour tags, subtitles and variable frame timing are not carried over. OUT is
written through a temporary file in its folder and renamed when complete. Needs
``ffmpeg`` and ``ffprobe`` on PATH; exit status 1 when the video fails, 2 for bad
options, model or a missing ffmpeg.
"""

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, List, Optional, Sequence

from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from common.atomic import atomic_write
from common.signals import as_interrupted, interruptible
from runtime import validate
from runtime.batch import check_writable
from runtime.cli_common import (
    add_model_options,
    build_deblurrer,
    fail,
    prog,
    setup_logging,
)
from runtime.deblurrer import Deblurrer
from runtime.errors import DeblurError
from runtime.stream import PIX_FMTS, run_stream

log = logging.getLogger("runtime")
FFMPEG_MISSING = (
    "ffmpeg and ffprobe are needed for video and are not on PATH "
    "(Debian / Ubuntu: apt-get install ffmpeg; others: https://ffmpeg.org/download.html)"
)


@dataclass
class VideoInfo:
    """What ``probe`` found in the first video stream.

    Attributes:
        width, height: Stored frame size in px (before rotation).
        pix_fmt: ffmpeg pixel format, e.g. ``yuv420p10le``.
        bit_depth: Largest bits per component of ``pix_fmt``.
        frame_rate: Average frame rate as ffmpeg writes it, e.g. ``30000/1001``.
        frames: Frame count (from the container, else duration x rate), or None.
        rotation: Display rotation in degrees counter-clockwise (0, 90, 180, 270).
        audio_streams: Number of audio streams.
    """

    width: int
    height: int
    pix_fmt: str
    bit_depth: int
    frame_rate: str
    frames: Optional[int]
    rotation: int
    audio_streams: int

    @property
    def pipe_format(self) -> str:
        """The raw frame format between ffmpeg and the network."""
        return "rgb48le" if self.bit_depth > 8 else "rgb24"


def _run(command: List[str]) -> str:
    """stdout of a short ffmpeg / ffprobe call; DeblurError with its last stderr line."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise DeblurError(f"{command[0]} failed: {_last_line(result.stderr)}")
    return result.stdout


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def bit_depth(pix_fmt: str) -> int:
    """Largest bits per component of an ffmpeg pixel format (``ffmpeg -pix_fmts``)."""
    for line in _run(["ffmpeg", "-hide_banner", "-pix_fmts"]).splitlines():
        fields = line.split()  # FLAGS NAME NB_COMPONENTS BITS_PER_PIXEL BIT_DEPTHS ("10-10-10")
        if len(fields) == 5 and fields[1] == pix_fmt:
            return max(int(bits) for bits in fields[4].split("-"))
    raise DeblurError(f"ffmpeg does not know the pixel format {pix_fmt!r}")


def encoder_pix_fmts(codec: str) -> List[str]:
    """Pixel formats that an ffmpeg encoder accepts (empty when it does not say)."""
    for line in _run(["ffmpeg", "-hide_banner", "-h", f"encoder={codec}"]).splitlines():
        if line.strip().startswith("Supported pixel formats:"):
            return line.split(":", 1)[1].split()
    return []


def has_display_rotation() -> bool:
    """Whether this ffmpeg has the ``-display_rotation`` input option (6.1 and later)."""
    return "-display_rotation" in _run(["ffmpeg", "-hide_banner", "-h", "full"])


def _rotation(stream: dict) -> int:
    for side in stream.get("side_data_list", []):
        if "rotation" in side:
            return int(side["rotation"]) % 360
    return int(stream.get("tags", {}).get("rotate", 0)) % 360


def probe(path: Path) -> VideoInfo:
    """Read the first video stream's format with ffprobe.

    Raises:
        DeblurError: Not a video ffprobe can read, or no video stream.
    """
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise DeblurError(f"{path}: not a readable video ({_last_line(result.stderr)})")
    found = json.loads(result.stdout)
    streams = found.get("streams", [])
    video = next(
        (
            s
            for s in streams
            if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")
        ),
        None,
    )
    if video is None:
        raise DeblurError(f"{path}: no video stream")
    rate = video.get("avg_frame_rate", "0/0")
    if rate in ("0/0", "0/1"):
        rate = video.get("r_frame_rate", "0/0")
    if rate in ("0/0", "0/1"):
        raise DeblurError(f"{path}: the video stream has no frame rate")
    frames: Optional[int] = int(video["nb_frames"]) if str(video.get("nb_frames", "")).isdigit() else None
    duration = video.get("duration", found.get("format", {}).get("duration"))
    if frames is None and duration not in (None, "N/A"):
        frames = round(float(duration) * Fraction(rate))
    return VideoInfo(
        width=int(video["width"]),
        height=int(video["height"]),
        pix_fmt=video["pix_fmt"],
        bit_depth=bit_depth(video["pix_fmt"]),
        frame_rate=rate,
        frames=frames,
        rotation=_rotation(video),
        audio_streams=sum(s.get("codec_type") == "audio" for s in streams),
    )


def decode_command(src: Path, info: VideoInfo) -> List[str]:
    """ffmpeg: the first video stream as stored (no auto-rotation) -> raw RGB on stdout."""
    return [
        "ffmpeg",
        "-v",
        "error",
        "-nostdin",
        "-noautorotate",
        "-i",
        str(src),
        "-map",
        "0:v:0",
        "-f",
        "rawvideo",
        "-pix_fmt",
        info.pipe_format,
        "-",
    ]


def encode_command(
    src: Path, info: VideoInfo, out: str, codec: str, crf: Optional[int], display_rotation: bool
) -> List[str]:
    """ffmpeg: raw RGB on stdin + the audio of ``src`` -> ``out``.

    Args:
        display_rotation: Set the rotation with ``-display_rotation`` (else a later
            stream-copy pass sets it, see ``retag_rotation``).
    """
    rotate = (
        ["-display_rotation", str(info.rotation), "-noautorotate"]
        if info.rotation and display_rotation
        else []
    )
    command = [
        "ffmpeg",
        "-v",
        "error",
        "-nostdin",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        info.pipe_format,
        "-s",
        f"{info.width}x{info.height}",
        "-framerate",
        info.frame_rate,
        *rotate,
        "-i",
        "-",
        "-i",
        str(src),
        "-map",
        "0:v:0",
        "-map",
        "1:a?",
        "-c:a",
        "copy",
        "-c:v",
        codec,
    ]
    if crf is not None:
        command += ["-crf", str(crf)]
    if info.pix_fmt in encoder_pix_fmts(codec):
        command += ["-pix_fmt", info.pix_fmt]
    else:
        log.warning("%s cannot encode %s: ffmpeg picks the closest pixel format it has", codec, info.pix_fmt)
    return command + [out]


def retag_rotation(path: str, rotation: int) -> None:
    """Set the rotation of ``path``'s video stream in place with a stream copy (ffmpeg < 6.1)."""
    fd, tmp = tempfile.mkstemp(prefix=".rotate-", suffix=Path(path).suffix, dir=Path(path).parent)
    os.close(fd)
    try:
        _run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-nostdin",
                "-y",
                "-i",
                path,
                "-map",
                "0",
                "-c",
                "copy",
                "-metadata:s:v:0",
                f"rotate={rotation}",
                tmp,
            ]
        )
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _close(pipe: IO[bytes]) -> None:
    try:
        pipe.close()
    except OSError:  # BrokenPipeError flushing into an encoder that stopped
        pass


def _stderr_text(handle: IO[bytes]) -> str:
    handle.seek(0)
    return handle.read().decode(errors="replace")


def deblur_video(
    deblurrer: Deblurrer,
    src: Path,
    out: Path,
    info: VideoInfo,
    codec: str = "libx264",
    crf: Optional[int] = 18,
    defocus_scale: float = 1.0,
    quiet: bool = False,
) -> int:
    """Decode ``src``, deblur every frame through ``run_stream``, encode ``out``.

    Returns:
        Frames written.

    Raises:
        DeblurError: ffmpeg failed to decode or encode (its last message line).
    """
    dtype = PIX_FMTS[info.pipe_format]
    display_rotation = has_display_rotation()
    frames = 0

    def write(tmp: str) -> None:
        nonlocal frames
        with tempfile.TemporaryFile() as dec_err, tempfile.TemporaryFile() as enc_err:
            decoder = subprocess.Popen(decode_command(src, info), stdout=subprocess.PIPE, stderr=dec_err)
            encoder = subprocess.Popen(
                encode_command(src, info, tmp, codec, crf, display_rotation),
                stdin=subprocess.PIPE,
                stderr=enc_err,
            )
            assert decoder.stdout is not None and encoder.stdin is not None
            failed: Optional[DeblurError] = None
            try:
                with tqdm(total=info.frames, desc=src.name, unit="frame", disable=quiet) as bar:
                    frames = run_stream(
                        deblurrer,
                        decoder.stdout,
                        encoder.stdin,
                        info.width,
                        info.height,
                        dtype,
                        defocus_scale,
                        progress=bar.update,
                    )
            except BrokenPipeError:
                pass  # the encoder stopped: its own message is reported below
            except DeblurError as err:
                failed = err  # reported unless ffmpeg's own failure explains it
            except BaseException:
                decoder.kill()
                encoder.kill()
                raise
            finally:
                _close(encoder.stdin)
                _close(decoder.stdout)
                encoder_rc, decoder_rc = encoder.wait(), decoder.wait()
            if encoder_rc != 0:
                raise DeblurError(f"{out}: ffmpeg could not encode it: {_last_line(_stderr_text(enc_err))}")
            if decoder_rc != 0:
                raise DeblurError(f"{src}: ffmpeg could not decode it: {_last_line(_stderr_text(dec_err))}")
            if failed is not None:
                raise failed
        if info.rotation and not display_rotation:
            retag_rotation(tmp, info.rotation)

    atomic_write(out, write, suffix=out.suffix)
    return frames


def check_paths(src: Path, out: Path) -> None:
    """Refuse, before any work, an input that is not a file and an output that cannot be one."""
    if not src.is_file():
        raise DeblurError(f"{src}: no such file" if not src.exists() else f"{src}: not a file")
    if not out.suffix:
        raise DeblurError(f"{out}: no extension, so no container format (use .mp4, .mkv, .mov, ...)")
    if out.exists() and out.is_dir():
        raise DeblurError(f"{out}: is a folder")
    if out.resolve() == src.resolve():
        raise DeblurError(f"{out}: is the input itself; name another output")
    try:
        check_writable(out.parent)
    except DeblurError as err:
        raise DeblurError(f"{out}: {err}") from None


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog("runtime.video"), description="Deblur a video file (ffmpeg in, ffmpeg out)."
    )
    parser.add_argument("input", type=Path, help="video file ffmpeg can read")
    parser.add_argument("output", type=Path, help="video file to write; its extension picks the container")
    parser.add_argument("--codec", default="libx264", help="ffmpeg video encoder (default libx264)")
    parser.add_argument(
        "--crf",
        type=int,
        default=18,
        help="encoder quality, lower is better (default 18; -1: the encoder's default)",
    )
    add_model_options(parser)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.quiet)
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        fail(FFMPEG_MISSING)
    try:
        validate.check_defocus_scale(args.defocus_scale)
        check_paths(args.input, args.output)
        info = probe(args.input)
    except DeblurError as err:
        fail(str(err), code=1)
    log.info(
        "%s: %dx%d %s (%d-bit), %s fps, %s frames, %d audio stream%s, rotation %d",
        args.input,
        info.width,
        info.height,
        info.pix_fmt,
        info.bit_depth,
        info.frame_rate,
        info.frames if info.frames is not None else "?",
        info.audio_streams,
        "" if info.audio_streams == 1 else "s",
        info.rotation,
    )
    try:
        deblurrer = build_deblurrer(args)
    except DeblurError as err:
        fail(str(err))
    try:
        with interruptible():
            frames = deblur_video(
                deblurrer,
                args.input,
                args.output,
                info,
                args.codec,
                None if args.crf < 0 else args.crf,
                args.defocus_scale,
                args.quiet,
            )
    except KeyboardInterrupt as err:
        stop = as_interrupted(err)
        print(
            f"error: interrupted by {stop.name} after {stop.done} frames; {args.output} is not written",
            file=sys.stderr,
        )
        return stop.exit_code
    except DeblurError as err:
        fail(str(err), code=1)
    except MemoryError:
        fail(f"out of memory for {info.width}x{info.height} frames (try a smaller --tile)", code=1)
    finally:
        deblurrer.close()
    log.info("wrote %s (%d frames, %s fps)", args.output, frames, info.frame_rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
