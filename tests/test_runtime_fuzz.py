"""Fuzzing the decoder boundary: mutated PNG, JPEG and TIFF files through ``runtime.infer``.

A seeded generator cuts small images from ``samples/``, encodes them in several layouts
(8/16-bit, grey, RGBA, float32 TIFF) and mutates each file once: bit flips, a
truncation, or a changed header field (width, height, bit depth, colour type, sample
format, compression, strip offsets ...; PNG chunks keep a valid CRC, and half the PNG bit
flips get theirs fixed, so libpng reads on into zlib and the filters).
One ``runtime.infer`` batch in a subprocess (a decoder crash cannot take pytest with it)
must give, for every file, a sane output (decodes, the input's size and sample type,
finite) or exactly one ``error:`` line naming it: no traceback, no hang, no crash, no
leftover file. ``DEFOCUS_FUZZ_FILES=N`` runs N files instead of CI's short run,
``DEFOCUS_FUZZ_SEED=S`` another seed (default 0); the counts are printed (``pytest -s``).
"""

import collections
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import cv2
import numpy as np
import pytest

from runtime import image_io

ROOT = Path(__file__).resolve().parent.parent
#: Files in the CI run (about 20 s on 2 busy cores); DEFOCUS_FUZZ_FILES overrides.
CI_FILES = 150
_NUMBERS = [0, 1, 2, 3, 7, 8, 16, 255, 256, 30_001, 65_535, 2**31 - 1, 2**32 - 1]


def _layouts(rng: np.random.Generator) -> List[Tuple[str, np.ndarray]]:
    """(extension, BGR(A) / grey image in OpenCV order) seeds cut from the samples."""
    samples = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in sorted((ROOT / "samples").glob("*.png"))]
    out = []
    for k in range(6):
        image = samples[k % len(samples)]
        h, w = int(rng.integers(9, 48)), int(rng.integers(9, 48))
        y, x = int(rng.integers(0, image.shape[0] - h)), int(rng.integers(0, image.shape[1] - w))
        crop = image[y : y + h, x : x + w]
        wide = crop.astype(np.uint16) * 257
        alpha = np.dstack([crop, rng.integers(0, 256, crop.shape[:2], dtype=np.uint8)])
        out += [
            (".png", crop),
            (".png", wide),
            (".png", crop[:, :, 0]),
            (".png", alpha),
            (".jpg", crop),
            (".jpg", crop[:, :, 1]),
            (".tif", crop),
            (".tif", wide),
            (".tif", (crop / 255.0).astype(np.float32)),
        ]
    return out


def _flip_bits(data: bytearray, rng: np.random.Generator) -> str:
    for _ in range(int(rng.integers(1, 9))):
        data[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
    return "bit flips"


def _fix_png_crcs(data: bytearray) -> None:
    """Recompute every chunk's CRC, so that libpng reads past a flipped bit to zlib and the filters."""
    at = 8
    while at + 12 <= len(data):
        length = struct.unpack(">I", data[at : at + 4])[0]
        if at + 12 + length > len(data):
            return
        crc = zlib.crc32(bytes(data[at + 4 : at + 8 + length]))
        data[at + 8 + length : at + 12 + length] = struct.pack(">I", crc)
        at += 12 + length


def _truncate(data: bytearray, rng: np.random.Generator) -> str:
    del data[int(rng.integers(0, len(data))) :]
    return "truncation"


def _png_header(data: bytearray, rng: np.random.Generator) -> str:
    field = str(rng.choice(["width", "height", "bit depth", "colour type", "interlace"]))
    offset, size = {
        "width": (16, 4),
        "height": (20, 4),
        "bit depth": (24, 1),
        "colour type": (25, 1),
        "interlace": (28, 1),
    }[field]
    value = int(rng.choice(_NUMBERS)) % (256**size)
    data[offset : offset + size] = value.to_bytes(size, "big")
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR's CRC stays valid
    return f"PNG {field} = {value}"


def _jpeg_header(data: bytearray, rng: np.random.Generator) -> str:
    i = 2
    while i + 9 < len(data) and data[i] == 0xFF:
        if 0xC0 <= data[i + 1] <= 0xC2:
            field = str(rng.choice(["precision", "height", "width", "components"]))
            offset, size = {"precision": (4, 1), "height": (5, 2), "width": (7, 2), "components": (9, 1)}[
                field
            ]
            value = int(rng.choice(_NUMBERS)) % (256**size)
            data[i + offset : i + offset + size] = value.to_bytes(size, "big")
            return f"JPEG {field} = {value}"
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return _flip_bits(data, rng)


_TIFF_TAGS = {
    256: "width",
    257: "height",
    258: "bits per sample",
    259: "compression",
    262: "photometric",
    273: "strip offsets",
    277: "samples per pixel",
    278: "rows per strip",
    279: "strip byte counts",
    284: "planar config",
    339: "sample format",
}


def _tiff_header(data: bytearray, rng: np.random.Generator) -> str:
    order = "<" if data[:2] == b"II" else ">"
    offset = struct.unpack(order + "I", data[4:8])[0]
    entries = []
    for k in range(struct.unpack(order + "H", data[offset : offset + 2])[0]):
        at = offset + 2 + 12 * k
        tag, kind = struct.unpack(order + "HH", data[at : at + 4])
        if tag in _TIFF_TAGS and kind in (3, 4):
            entries.append((at, tag, kind))
    at, tag, kind = entries[int(rng.integers(0, len(entries)))]
    value = int(rng.choice(_NUMBERS)) % (2 ** (16 if kind == 3 else 32))
    data[at + 8 : at + (10 if kind == 3 else 12)] = struct.pack(order + ("H" if kind == 3 else "I"), value)
    return f"TIFF {_TIFF_TAGS[tag]} = {value}"


_HEADERS: Dict[str, Callable[[bytearray, np.random.Generator], str]] = {
    ".png": _png_header,
    ".jpg": _jpeg_header,
    ".tif": _tiff_header,
}


def mutated_files(folder: Path, count: int, seed: int = 0) -> Dict[str, str]:
    """Write ``count`` mutated files into ``folder``; returns file name -> mutation."""
    rng = np.random.default_rng(seed)
    layouts = _layouts(rng)
    made = {}
    for n in range(count):
        ext, image = layouts[n % len(layouts)]
        ok, encoded = cv2.imencode(ext, image)
        assert ok
        data = bytearray(encoded.tobytes())
        kind = n // len(layouts) % 3
        how = (_flip_bits, _truncate, _HEADERS[ext])[kind](data, rng)
        if ext == ".png" and kind == 0 and n % 2:
            _fix_png_crcs(data)
            how += ", CRCs fixed"
        name = f"f{n:04d}{ext}"
        (folder / name).write_bytes(bytes(data))
        made[name] = how
    return made


def _sane(src: Path, out: Path) -> bool:
    """The output decodes, with the input's size, layout and sample type, finite."""
    written = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    loaded = image_io.read_image(src)
    if written is None or written.shape[:2] != loaded.rgb.shape[:2] or written.dtype != loaded.rgb.dtype:
        return False
    return bool(np.isfinite(written).all()) and (written.ndim == 2) == loaded.grey


def test_mutated_files_give_a_sane_output_or_one_error_line(tiny_bundle, tmp_path):
    count = int(os.environ.get("DEFOCUS_FUZZ_FILES", CI_FILES))
    seed = int(os.environ.get("DEFOCUS_FUZZ_SEED", 0))
    folder, out = tmp_path / "fuzz", tmp_path / "out"
    folder.mkdir()
    made = mutated_files(folder, count, seed)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime.infer",
            str(folder),
            "--output-dir",
            str(out),
            "--model",
            str(tiny_bundle[0]),
            "--device",
            "cpu",
            "--threads",
            "1",
            "-q",
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=60 + count,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    per_file = collections.Counter(line.split(": ", 2)[1] for line in errors)
    outputs = {p.name for p in out.iterdir()} if out.exists() else set()
    counts, badly = collections.Counter(), []
    for name, how in made.items():
        src = folder / name
        wrote = [o for o in outputs if o.startswith(f"{src.stem}_deblurred.")]
        refused = per_file[str(src)]
        if refused == 1 and not wrote:
            counts["clean refusals"] += 1
        elif refused == 0 and len(wrote) == 1 and _sane(src, out / wrote[0]):
            counts["sane outputs"] += 1
        else:
            counts["anything else"] += 1
            badly.append(f"{name} ({how}): {refused} error lines, output {wrote}")
    leftovers = sorted(p.name for p in out.glob(".*")) if out.exists() else []
    print(
        f"\nfuzz (seed {seed}): {count} files, {counts['clean refusals']} clean refusals, "
        f"{counts['sane outputs']} sane outputs, {counts['anything else']} anything else; "
        f"exit {result.returncode}"
    )
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == (1 if counts["clean refusals"] else 0), result.stderr[-3000:]
    assert not badly and not leftovers, (badly, leftovers)
    assert counts["clean refusals"] + counts["sane outputs"] == count
    if counts["clean refusals"]:
        assert errors[-1].startswith(f"error: {counts['clean refusals']} of {count} images failed")
    assert counts["clean refusals"] > count // 10 and counts["sane outputs"] > count // 10, counts


@pytest.mark.parametrize("seed", [0, 1])
def test_mutations_are_seeded(tmp_path, seed):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    assert mutated_files(first, 30, seed) == mutated_files(second, 30, seed)
    assert all((first / n).read_bytes() == (second / n).read_bytes() for n in os.listdir(first))
