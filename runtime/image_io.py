"""Image files: PNG (8/16-bit), JPEG, TIFF, WebP through OpenCV, in RGB order.

``read_image`` decodes with ``IMREAD_UNCHANGED`` (keeps 16-bit and alpha, but ignores
EXIF orientation) and applies the EXIF orientation itself; TIFF files come out of
OpenCV's TIFF decoder already oriented. Writes go to a temporary file in the target
folder, renamed into place when complete.

Defocus map files (``--defocus-map``): one-channel images. A float32 TIFF holds map
units directly (``--save-defocus-map raw`` writes one, so maps round-trip exactly);
in an 8- or 16-bit PNG / TIFF a value v means ``v / (2**bits - 1) * MAP_FILE_MAX``
map units (16-bit steps: ``MAP_FILE_MAX / 65535``), handy for painted maps.
Map units: blur-disc radius px / ``map_radius_scale_px`` (10 px for the shipped models).
Not the training data's DED-style PNGs (``training.data.read_radius_png``: radius px x 1000).
"""

import logging
import math
import os
import stat
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np

# Set before OpenCV is first imported: refuse absurd images before allocating them.
MAX_PIXELS = 400_000_000
MAX_SIDE = 30_000
#: Larger files are refused before they are read (400 MP of 16-bit RGBA, uncompressed).
MAX_FILE_BYTES = MAX_PIXELS * 8
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))
import cv2  # noqa: E402

from common import atomic  # noqa: E402
from runtime.errors import ImageError  # noqa: E402

log = logging.getLogger("runtime")

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")
#: Formats without an alpha channel: an RGBA image is written without it, with a warning.
_NO_ALPHA = (".jpg", ".jpeg")
#: Sample types beyond 8 bits: (name, the extensions whose formats hold them).
_DEEP_FORMATS = {
    np.dtype(np.uint16): ("16-bit", (".png", ".tif", ".tiff")),
    np.dtype(np.float32): ("float32", (".tif", ".tiff")),
}
#: Map value of the brightest 8/16-bit map file pixel (4.0 = 40 px blur radius).
MAP_FILE_MAX = 4.0
#: Layout of the pictures: the map's legend strip, its tick spacing and the
#: comparison's label strip and gaps (px), and the labels' font scale.
LEGEND_HEIGHT = 44
_TICK_SPACING_PX = 40
LABEL_HEIGHT = 24
GAP_PX = 8
_FONT_SCALE = 0.35
_EXIF_ORIENTATION_TAG = 0x0112


@dataclass
class LoadedImage:
    """A decoded image split into what the network sees and what passes through.

    Attributes:
        rgb: (H, W, 3) uint8 / uint16 / float32, RGB (grey inputs replicated).
        alpha: (H, W) alpha channel, untouched, or None.
        grey: True when the file was one-channel: written back as grey.
    """

    rgb: np.ndarray
    alpha: Optional[np.ndarray]
    grey: bool


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence libjpeg / libpng warnings that decoders print on fd 2."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _tiff_size(data: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) from the first IFD of a classic TIFF, else None."""
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 8 or struct.unpack(order + "H", data[2:4])[0] != 42:
        return None
    offset = struct.unpack(order + "I", data[4:8])[0]
    if offset + 2 > len(data):
        return None
    sizes = {}
    for k in range(struct.unpack(order + "H", data[offset : offset + 2])[0]):
        entry = offset + 2 + 12 * k
        if entry + 12 > len(data):
            break
        tag, kind = struct.unpack(order + "HH", data[entry : entry + 4])
        if tag in (256, 257) and kind in (3, 4):  # ImageWidth, ImageLength as SHORT or LONG
            fmt, end = ("H", entry + 10) if kind == 3 else ("I", entry + 12)
            sizes[tag] = struct.unpack(order + fmt, data[entry + 8 : end])[0]
    return (sizes[256], sizes[257]) if len(sizes) == 2 else None


def probe_size(data: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) from a PNG, JPEG, WebP or TIFF header without decoding, else None."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            length = struct.unpack(">H", data[i + 2 : i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return width, height
            i += 2 + length
        return None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and data[12:16] == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return _tiff_size(data)


def exif_orientation(exif: bytes) -> int:
    """EXIF orientation (1-8) from a raw EXIF block (TIFF layout), 1 when absent."""
    if exif[:6] == b"Exif\x00\x00":
        exif = exif[6:]
    if len(exif) < 8 or exif[:2] not in (b"II", b"MM"):
        return 1
    order = "<" if exif[:2] == b"II" else ">"
    offset = struct.unpack(order + "I", exif[4:8])[0]
    if offset + 2 > len(exif):
        return 1
    count = struct.unpack(order + "H", exif[offset : offset + 2])[0]
    for k in range(count):
        entry = offset + 2 + 12 * k
        if entry + 12 > len(exif):
            break
        tag, kind = struct.unpack(order + "HH", exif[entry : entry + 4])
        if tag == _EXIF_ORIENTATION_TAG and kind == 3:
            value = struct.unpack(order + "H", exif[entry + 8 : entry + 10])[0]
            return value if 1 <= value <= 8 else 1
    return 1


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn a stored image upright for an EXIF orientation (as OpenCV's IMREAD_COLOR does)."""
    if orientation in (5, 6, 7, 8):
        image = cv2.transpose(image)
    flip = {2: 1, 3: -1, 4: 0, 6: 1, 7: -1, 8: 0}.get(orientation)
    return image if flip is None else cv2.flip(image, flip)


def _read_bounded(path: Path) -> bytes:
    """The bytes of a regular file of at most ``MAX_FILE_BYTES`` (FIFOs and devices refused)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as err:
        raise ImageError(f"{path}: cannot read ({err.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{path}: is a folder, not an image")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"{path}: not a regular file (a FIFO, device or socket)")
    if info.st_size > MAX_FILE_BYTES:
        raise ImageError(f"{path}: {info.st_size} bytes is too large (limit {MAX_FILE_BYTES >> 30} GiB)")
    if info.st_size == 0:
        raise ImageError(f"{path}: empty file")
    try:
        with open(path, "rb") as f:
            return f.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise ImageError(f"{path}: cannot read ({err.strerror})") from None


def _decode(path: Path) -> np.ndarray:
    data = _read_bounded(path)
    if not data or len(data) > MAX_FILE_BYTES:
        raise ImageError(f"{path}: changed while it was read")
    size = probe_size(data)
    if size is not None:
        _check_size(path, size[0], size[1])
    try:
        with _quiet_stderr():
            image, types, metadata = cv2.imdecodeWithMetadata(
                np.frombuffer(data, np.uint8), flags=cv2.IMREAD_UNCHANGED
            )
    except cv2.error as err:
        if "CV_IO_MAX_IMAGE_PIXELS" in str(err):
            raise ImageError(
                f"{path}: too large (limit {MAX_SIDE} px a side, {MAX_PIXELS // 1_000_000} MP)"
            ) from None
        raise ImageError(
            f"{path}: not a readable image (the decoder failed: {str(err).strip().splitlines()[-1][:160]})"
        ) from None
    except MemoryError:
        raise ImageError(f"{path}: out of memory while decoding") from None
    if image is None:
        raise ImageError(f"{path}: not a readable image (unsupported format, truncated or corrupt)")
    _check_size(path, image.shape[1], image.shape[0])
    for kind, block in zip(types, metadata):
        if kind == cv2.IMAGE_METADATA_EXIF:
            image = apply_orientation(image, exif_orientation(np.asarray(block).tobytes()))
    return image


def _check_size(path: Path, width: int, height: int) -> None:
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise ImageError(
            f"{path}: {width}x{height} is too large (limit {MAX_SIDE} px a side, "
            f"{MAX_PIXELS // 1_000_000} MP)"
        )
    if width < 1 or height < 1:
        raise ImageError(f"{path}: {width}x{height} has no pixels")


def read_image(path: Path) -> LoadedImage:
    """Read an image as RGB (+ alpha), upright, in its own bit depth.

    Raises:
        ImageError: Missing, empty, non-image, truncated, too large, or an
            unsupported depth (one-line message).
    """
    image = _decode(Path(path))
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        raise ImageError(f"{path}: unsupported sample type {image.dtype} (use 8/16-bit or float32)")
    if image.ndim == 2 or image.shape[2] == 1:
        grey = image.reshape(image.shape[:2])
        return LoadedImage(np.repeat(grey[:, :, None], 3, axis=2), None, True)
    if image.shape[2] == 3:
        return LoadedImage(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), None, False)
    if image.shape[2] == 4:
        return LoadedImage(cv2.cvtColor(image, cv2.COLOR_BGRA2RGB), image[:, :, 3].copy(), False)
    raise ImageError(f"{path}: {image.shape[2]} channels (expected grey, RGB or RGBA)")


def compose(rgb: np.ndarray, alpha: Optional[np.ndarray], grey: bool) -> np.ndarray:
    """Deblurred RGB (+ original alpha) back to the file's layout, in BGR(A) order."""
    if grey:
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if alpha is not None:
        return np.dstack([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), alpha])
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def output_extension(dtype: np.dtype) -> str:
    """The default output format for samples of ``dtype``: PNG, TIFF for float32."""
    return ".tif" if dtype == np.float32 else ".png"


def check_output(path: Path, dtype: np.dtype) -> None:
    """Raise ``ImageError`` unless ``path``'s format can hold samples of ``dtype``
    (uint8 anywhere, uint16 in PNG / TIFF, float32 in TIFF): checked before the work."""
    ext = Path(path).suffix.lower()
    if ext not in EXTENSIONS:
        raise ImageError(f"{path}: unknown output format {ext!r} (use {', '.join(EXTENSIONS)})")
    name, holders = _DEEP_FORMATS.get(np.dtype(dtype), ("", EXTENSIONS))
    if ext not in holders:
        raise ImageError(f"{path}: {ext} cannot hold {name} samples; write {' or '.join(holders[:2])}")


def encode_image(path: Path, image: np.ndarray) -> bytes:
    """The file bytes of ``image`` in ``path``'s format.

    Args:
        image: BGR / BGRA / grey in OpenCV order: uint8, uint16 (PNG / TIFF) or
            float32 (TIFF). BGRA into JPEG loses the alpha, with a warning.

    Raises:
        ImageError: Unknown extension, or a depth the format cannot hold.
    """
    path = Path(path)
    ext = path.suffix.lower()
    check_output(path, image.dtype)
    if ext in _NO_ALPHA and image.ndim == 3 and image.shape[2] == 4:
        log.warning(
            "%s: JPEG has no alpha channel: the input's alpha is not written "
            "(write .png, .tif or .webp to keep it)",
            path,
        )
        image = image[:, :, :3]
    ok, encoded = cv2.imencode(ext, image)
    if not ok:
        raise ImageError(f"{path}: OpenCV could not encode this image as {ext}")
    return encoded.tobytes()


def write_image(path: Path, image: np.ndarray) -> None:
    """Encode by extension (``encode_image``) and write atomically."""
    write_files([(Path(path), encode_image(path, image))])


def write_files(files: Sequence[Tuple[Path, bytes]]) -> None:
    """Write all files or none: each to a temporary file in its folder, then all renamed.

    Raises:
        ImageError: A missing or unwritable folder, a full disk; no file of the set is left.
    """
    for path, _ in files:
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir():
            raise ImageError(f"{path}: output folder {folder} does not exist")
    try:
        atomic.atomic_write_all(files)
    except OSError as err:
        first = files[0][0]
        raise ImageError(f"{first}: cannot write to {first.parent} ({err.strerror})") from None


def read_map_file(path: Path) -> np.ndarray:
    """A runtime map file (``--defocus-map``) -> float32 (H, W) in map units: float32 TIFF as is,
    8/16-bit v -> ``v / (2**bits - 1) * MAP_FILE_MAX`` (see the module docstring)."""
    image = _decode(Path(path))
    if image.ndim == 3:
        if image.shape[2] != 1:
            raise ImageError(
                f"{path}: a defocus map must be one-channel (grey), got {image.shape[2]} channels"
            )
        image = image[:, :, 0]
    if image.dtype == np.float32:
        return image
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{path}: unsupported defocus map type {image.dtype}")
    top = np.iinfo(image.dtype).max
    return image.astype(np.float32) * np.float32(MAP_FILE_MAX / top)


def encode_map_file(path: Path, defocus_map: np.ndarray) -> bytes:
    """The raw map as float32 TIFF bytes in map units: ``read_map_file`` reads it back exactly."""
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        raise ImageError(f"{path}: raw defocus maps are written as float32 .tif")
    ok, encoded = cv2.imencode(".tif", np.ascontiguousarray(defocus_map, dtype=np.float32))
    if not ok:
        raise ImageError(f"{path}: OpenCV could not encode the defocus map")
    return encoded.tobytes()


def write_map_file(path: Path, defocus_map: np.ndarray) -> None:
    """Write the raw map (``encode_map_file``) atomically."""
    write_files([(Path(path), encode_map_file(path, defocus_map))])


def _tick_step(top: float, intervals: int) -> float:
    """The smallest 1-2-5 step that divides [0, top] into at most ``intervals`` parts."""
    exponent = math.floor(math.log10(top)) - 1 if top > 0 else 0
    while True:
        for mantissa in (1, 2, 5):
            step = mantissa * 10.0**exponent
            if top / step <= intervals:
                return step
        exponent += 1


def _legend(width: int, top_px: float) -> np.ndarray:
    """The colour bar under a map: ticks labelled in px of blur radius, and a caption."""
    legend = np.zeros((LEGEND_HEIGHT, width, 3), np.uint8)
    legend[:10] = cv2.applyColorMap(
        np.linspace(0, 255, width, dtype=np.float32).astype(np.uint8)[None, :], cv2.COLORMAP_INFERNO
    )
    step = _tick_step(top_px, max(1, width // _TICK_SPACING_PX))
    ticks = [k * step for k in range(int(top_px / step + 1e-9) + 1)]
    for value in ticks:
        x = int(round(value / top_px * (width - 1))) if top_px > 0 else 0
        legend[10:15, x] = 255
        label = f"{value:g}"
        (text_w, _), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, _FONT_SCALE, 1)
        left = min(max(0, x - text_w // 2), max(0, width - text_w))
        cv2.putText(
            legend, label, (left, 26), cv2.FONT_HERSHEY_SIMPLEX, _FONT_SCALE, (255, 255, 255), 1, cv2.LINE_AA
        )
    cv2.putText(
        legend,
        "blur radius, px",
        (2, 39),
        cv2.FONT_HERSHEY_SIMPLEX,
        _FONT_SCALE,
        (255, 255, 255),
        1,
        cv2.LINE_AA,
    )
    return legend


def colorize_defocus_map(defocus_map: np.ndarray, radius_scale_px: float, map_max: float) -> np.ndarray:
    """Colour-mapped map with its scale below.

    Args:
        defocus_map: (H, W) float32 in map units.
        radius_scale_px: Map value 1.0 is a blur disc of this radius (``Bundle.map_radius_scale_px``).
        map_max: Top of the colour scale in map units: the model's trained range
            (``Bundle.map_max``; 1.0 = 10 px for the shipped models). Larger values saturate.

    Returns:
        BGR uint8 image of height H + ``LEGEND_HEIGHT``: inferno from 0 to
        ``map_max * radius_scale_px`` px, ticks labelled in px (1-2-5 steps, about
        one per ``_TICK_SPACING_PX`` px of width).
    """
    level = np.clip(defocus_map / map_max, 0.0, 1.0) * 255.0 + 0.5
    colored = cv2.applyColorMap(level.astype(np.uint8), cv2.COLORMAP_INFERNO)
    return np.vstack([colored, _legend(colored.shape[1], map_max * radius_scale_px)])


def display_bgr(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB of any sample type -> BGR uint8 for looking at (16-bit / 257, float x 255)."""
    if rgb.dtype == np.uint16:
        rgb = (rgb.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif rgb.dtype != np.uint8:
        rgb = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def side_by_side(panels: Sequence[Tuple[str, np.ndarray]]) -> np.ndarray:
    """Labelled BGR uint8 panels in a row (the comparison picture of ``--save-comparison``).

    Each panel gets its label in a strip above it; shorter panels are padded with
    black at the bottom, and 8 px of grey separate them.
    """
    height = max(image.shape[0] for _, image in panels)
    row = []
    for k, (label, image) in enumerate(panels):
        strip = np.zeros((LABEL_HEIGHT, image.shape[1], 3), np.uint8)
        cv2.putText(
            strip,
            label,
            (4, LABEL_HEIGHT - 7),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
        pad = np.zeros((height - image.shape[0], image.shape[1], 3), np.uint8)
        row.append(np.vstack([strip, image, pad]))
        if k + 1 < len(panels):
            row.append(np.full((height + LABEL_HEIGHT, GAP_PX, 3), 96, np.uint8))
    return np.hstack(row)
