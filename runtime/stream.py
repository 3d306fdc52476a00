"""Deblur raw video frames: stdin -> stdout, one frame at a time.

    ffmpeg -noautorotate -i in.mp4 -f rawvideo -pix_fmt rgb24 - \\
      | python -m runtime.stream --width W --height H \\
      | ffmpeg -f rawvideo -pix_fmt rgb24 -s WxH -r FPS -i - -i in.mp4 \\
          -map 0:v -map '1:a?' -c:a copy -pix_fmt yuv420p out.mp4

W, H and FPS: ``ffprobe -v error -select_streams v:0 -show_entries
stream=width,height,avg_frame_rate -of csv=p=0 in.mp4``. ``runtime.video`` does all
of this (``python -m runtime.video in.mp4 out.mp4``).

Frames are packed RGB, ``rgb24`` (8-bit) or ``rgb48le`` (16-bit little-endian);
output frames have the input's format and are flushed one by one. Logs go to
stderr. Exit status as ``runtime.infer``: 1 when the stream fails (it ends inside a
frame, stdout closes), 2 for bad options or model.
"""

import argparse
import logging
import sys
from typing import IO, Callable, Dict, Optional, Sequence

import numpy as np

from common.signals import as_interrupted, interruptible
from runtime import validate
from runtime.cli_common import (
    add_model_options,
    build_deblurrer,
    fail,
    prog,
    setup_logging,
)
from runtime.deblurrer import Deblurrer
from runtime.errors import DeblurError
from runtime.image_io import MAX_PIXELS, MAX_SIDE

log = logging.getLogger("runtime")
PIX_FMTS: Dict[str, np.dtype] = {"rgb24": np.dtype(np.uint8), "rgb48le": np.dtype("<u2")}


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog("runtime.stream"), description="Deblur raw RGB frames from stdin to stdout."
    )
    parser.add_argument("--width", type=int, required=True, help="frame width in px")
    parser.add_argument("--height", type=int, required=True, help="frame height in px")
    parser.add_argument(
        "--pix-fmt", choices=sorted(PIX_FMTS), default="rgb24", help="rgb24 (default) or rgb48le"
    )
    add_model_options(parser)
    return parser.parse_args(argv)


def read_exact(stream: IO[bytes], size: int) -> bytes:
    """Up to ``size`` bytes; fewer only at the end of the stream."""
    chunks, got = [], 0
    while got < size:
        chunk = stream.read(size - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def run_stream(
    deblurrer: Deblurrer,
    source: IO[bytes],
    sink: IO[bytes],
    width: int,
    height: int,
    dtype: np.dtype,
    defocus_scale: float = 1.0,
    progress: Optional[Callable[[int], object]] = None,
) -> int:
    """Deblur frames until the end of ``source``.

    Args:
        progress: Called with 1 after each frame written (a tqdm bar's ``update``).

    Returns:
        Frames written.

    Raises:
        DeblurError: A short last frame (message says how many bytes came).
        Interrupted: SIGINT / SIGTERM (``done``: the frames written).
    """
    frame_bytes = width * height * 3 * dtype.itemsize
    frames = 0
    try:
        while True:
            data = read_exact(source, frame_bytes)
            if not data:
                return frames
            if len(data) < frame_bytes:
                raise DeblurError(
                    f"stdin ended inside frame {frames + 1}: got {len(data)} of "
                    f"{frame_bytes} bytes ({width}x{height} {dtype.name} RGB)"
                )
            frame = np.frombuffer(data, dtype=dtype).reshape(height, width, 3)
            out, _ = deblurrer.run(frame.astype(dtype.newbyteorder("=")), defocus_scale)
            frames += 1  # before the write: a reader that has the frame sees it counted
            sink.write(np.ascontiguousarray(out, dtype=dtype).tobytes())
            sink.flush()
            if progress is not None:
                progress(1)
    except KeyboardInterrupt as err:
        raise as_interrupted(err, frames) from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.quiet)
    if args.width < 1 or args.height < 1:
        fail(f"--width and --height must be positive, got {args.width}x{args.height}")
    if max(args.width, args.height) > MAX_SIDE or args.width * args.height > MAX_PIXELS:
        fail(
            f"{args.width}x{args.height} frames are too large (limit {MAX_SIDE} px a side, "
            f"{MAX_PIXELS // 1_000_000} MP)"
        )
    frames = 0
    with interruptible():
        try:
            try:
                validate.check_defocus_scale(args.defocus_scale)
                deblurrer = build_deblurrer(args)
            except DeblurError as err:
                fail(str(err))
            frames = run_stream(
                deblurrer,
                sys.stdin.buffer,
                sys.stdout.buffer,
                args.width,
                args.height,
                PIX_FMTS[args.pix_fmt],
                args.defocus_scale,
            )
        except KeyboardInterrupt as err:
            stop = as_interrupted(err)  # inside run_stream, or after it returned
            print(f"error: interrupted by {stop.name} after {max(stop.done, frames)} frames", file=sys.stderr)
            return stop.exit_code
        except DeblurError as err:
            fail(str(err), code=1)
        except BrokenPipeError:
            fail("stdout closed by the reader", code=1)
        except MemoryError:
            fail(f"out of memory for {args.width}x{args.height} frames (try a smaller --tile)", code=1)
    log.info("%d frames", frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
