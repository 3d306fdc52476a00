"""Deblur image files.

    python -m runtime.infer IMAGE [IMAGE or DIR ...] [-o OUT.png | --output-dir DIR]
        [--model BUNDLE|ONNX|ENGINE] [--backend auto|tensorrt|onnxruntime|onnxruntime-trt|openvino]
        [--device auto|cpu|cuda] [--precision fp32|fp16|bf16] [--tile N] [--overlap N]
        [--tile-batch N] [--threads N] [--save-defocus-map [color|raw|both]]
        [--defocus-scale S] [--defocus-map FILE] [--self-ensemble 1|2|4|8] [--save-comparison]

Outputs (one rule, ``runtime.batch``): ``<stem>_deblurred.png`` (``.tif`` for float32
TIFF inputs) in the input's folder or ``--output-dir``, or ``-o OUT`` for one image; the
output keeps the input's sample type, and a format that cannot hold it is refused before
any work. Defocus maps: ``<stem>_defocus.png`` (colour from 0 to the model's trained
range, ticks in px of blur radius) and ``<stem>_defocus_raw.tif`` (float32 map units,
read back exactly by ``--defocus-map``) beside the output; ``--save-comparison``:
``<stem>_compare.png``, input, output and colour map side by side. Outputs that would
overwrite an input or each other, and unwritable output folders, are refused before the
model loads; folder runs skip earlier outputs. A file that fails is reported and
skipped, leaving none of its files. Exit status: 0, 1 when any file failed, 2 for bad
options or model, 130 / 143 on SIGINT / SIGTERM.
"""

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

from common.signals import as_interrupted, interruptible
from runtime import batch, image_io, validate
from runtime.cli_common import (
    add_model_options,
    build_deblurrer,
    fail,
    prog,
    setup_logging,
)
from runtime.deblurrer import Deblurrer
from runtime.errors import DeblurError

log = logging.getLogger("runtime")
#: Show a per-tile bar for images with at least this many tiles.
_TILE_BAR_MIN = 16


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog("runtime.infer"), description="Single-image defocus deblurring."
    )
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", type=Path, help="output file (one input only)")
    out.add_argument(
        "--output-dir",
        type=Path,
        help="write DIR/<stem>_deblurred.png for each input (.tif for float32 TIFFs)",
    )
    parser.add_argument(
        "--save-defocus-map",
        nargs="?",
        const="color",
        default=None,
        choices=("color", "raw", "both"),
        help="also write the map: color (<stem>_defocus.png), raw (float32 "
        "<stem>_defocus_raw.tif, for --defocus-map) or both",
    )
    parser.add_argument(
        "--defocus-map",
        type=Path,
        default=None,
        help=f"use this map instead of the estimate: float32 TIFF in map units "
        f"(blur radius px / 10), or grey 8/16-bit PNG/TIFF meaning "
        f"value / max * {image_io.MAP_FILE_MAX:g} map units",
    )
    parser.add_argument(
        "--save-comparison",
        action="store_true",
        help="also write <stem>_compare.png: input, deblurred and colour map side "
        "by side, labelled (8-bit, for looking at)",
    )
    add_model_options(parser)
    return parser.parse_args(argv)


def process(
    deblurrer: Deblurrer, src: Path, args: argparse.Namespace, user_map: Optional[np.ndarray] = None
) -> Path:
    """Read, deblur and write one image; returns the deblurred file (raises DeblurError).

    The deblurred image and its maps are written together or not at all.
    """
    loaded = image_io.read_image(src)
    out, color_path, raw_path, compare_path = batch.output_paths(
        src, args.output, args.output_dir, image_io.output_extension(loaded.rgb.dtype)
    )
    image_io.check_output(out, loaded.rgb.dtype)
    height, width = loaded.rgb.shape[:2]
    tiles = deblurrer.count_tiles(height, width, with_map=user_map is not None)
    with tqdm(
        total=tiles, desc=src.name, unit="tile", leave=False, disable=args.quiet or tiles < _TILE_BAR_MIN
    ) as bar:
        try:
            deblurred, dmap = deblurrer.run(loaded.rgb, args.defocus_scale, user_map, progress=bar.update)
        except DeblurError as err:
            raise type(err)(f"{src}: {err}") from None
    files = [(out, image_io.encode_image(out, image_io.compose(deblurred, loaded.alpha, loaded.grey)))]
    if args.save_defocus_map in ("color", "both") or args.save_comparison:
        bundle = deblurrer.bundle
        colored = image_io.colorize_defocus_map(dmap, bundle.map_radius_scale_px, bundle.map_max)
        if args.save_defocus_map in ("color", "both"):
            files.append((color_path, image_io.encode_image(color_path, colored)))
        if args.save_comparison:
            picture = image_io.side_by_side(
                [
                    ("input", image_io.display_bgr(loaded.rgb)),
                    ("deblurred", image_io.display_bgr(deblurred)),
                    ("defocus map", colored),
                ]
            )
            files.append((compare_path, image_io.encode_image(compare_path, picture)))
    if args.save_defocus_map in ("raw", "both"):
        files.append((raw_path, image_io.encode_map_file(raw_path, dmap)))
    image_io.write_files(files)
    return out


def written_summary(outputs: Sequence[Path]) -> str:
    """``wrote FILE`` for one output, else ``wrote N images to FOLDER`` (or to K folders)."""
    if len(outputs) == 1:
        return f"wrote {outputs[0]}"
    folders = {out.parent for out in outputs}
    where = f"to {folders.pop()}/" if len(folders) == 1 else f"into {len(folders)} folders"
    return f"wrote {len(outputs)} images {where}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.quiet)
    inputs = batch.collect_inputs(args.inputs)
    if not inputs:
        fail("no images found in the given folders")
    if args.output is not None and len(inputs) > 1:
        fail(f"-o names one output but there are {len(inputs)} inputs: use --output-dir")
    if args.defocus_map is not None and len(inputs) > 1:
        fail("--defocus-map applies to one input image only")
    if args.output_dir is not None:
        if args.output_dir.exists() and not args.output_dir.is_dir():
            fail(f"--output-dir {args.output_dir} is a file")
        try:
            args.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            fail(f"cannot create --output-dir {args.output_dir}: {err.strerror}")
    try:
        validate.check_defocus_scale(args.defocus_scale)
        batch.check_plan(
            inputs,
            args.output,
            args.output_dir,
            args.save_defocus_map,
            args.save_comparison,
            args.defocus_map,
        )
    except DeblurError as err:
        fail(str(err))
    failures: List[Tuple[Path, str]] = []
    # Paths that are not there fail now, not after the model has loaded.
    for src in [p for p in inputs if not p.exists()]:
        failures.append((src, "no such file"))
        print(f"error: {src}: no such file", file=sys.stderr)
    todo = [p for p in inputs if p.exists()]
    user_map = None
    try:
        if args.defocus_map is not None:
            user_map = image_io.read_map_file(args.defocus_map)
    except DeblurError as err:
        fail(str(err), code=1)
    if not todo:
        return _finish(inputs, failures, [])
    written: List[Path] = []
    with interruptible():
        try:
            try:
                deblurrer = build_deblurrer(args)
            except DeblurError as err:
                fail(str(err))
            for src in tqdm(todo, desc="images", unit="img", disable=args.quiet or len(todo) < 2):
                try:
                    written.append(process(deblurrer, src, args, user_map))
                except DeblurError as err:
                    failures.append((src, str(err)))
                    tqdm.write(f"error: {err}", file=sys.stderr)
                except MemoryError:
                    failures.append((src, "out of memory"))
                    tqdm.write(f"error: {src}: out of memory (try a smaller --tile)", file=sys.stderr)
            deblurrer.close()
        except KeyboardInterrupt as err:
            stop = as_interrupted(err, len(written))
            print(
                f"error: interrupted by {stop.name} after {stop.done} of {len(inputs)} images; "
                "the finished outputs are kept",
                file=sys.stderr,
            )
            return stop.exit_code
    return _finish(inputs, failures, written)


def _finish(inputs: Sequence[Path], failures: Sequence[Tuple[Path, str]], written: Sequence[Path]) -> int:
    """Log what was written (last line) and return the exit status."""
    if written:
        log.info(written_summary(written))
    if failures and len(inputs) > 1:
        names = ", ".join(str(p) for p, _ in failures)
        print(f"error: {len(failures)} of {len(inputs)} images failed: {names}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
