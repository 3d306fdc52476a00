"""Image files: bit depths, grey, alpha, EXIF orientation, size limits, map encoding."""

import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from runtime import image_io
from runtime.errors import ImageError

RNG = np.random.default_rng(0)


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_lossless_round_trip(tmp_path, ext, dtype, channels):
    top = np.iinfo(dtype).max
    stored = RNG.integers(0, top + 1, (17, 23, channels)).astype(dtype)
    path = tmp_path / f"x{ext}"
    image_io.write_image(path, stored[:, :, 0] if channels == 1 else stored)
    loaded = image_io.read_image(path)
    assert loaded.rgb.dtype == dtype and loaded.rgb.shape == (17, 23, 3)
    assert loaded.grey == (channels == 1)
    back = image_io.compose(loaded.rgb, loaded.alpha, loaded.grey)
    np.testing.assert_array_equal(back, stored[:, :, 0] if channels == 1 else stored)
    if channels == 4:
        np.testing.assert_array_equal(loaded.alpha, stored[:, :, 3])
        np.testing.assert_array_equal(loaded.rgb, stored[:, :, 2::-1])
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_grey_written_back_as_grey(tmp_path):
    rgb = np.repeat(RNG.integers(0, 256, (9, 11, 1)).astype(np.uint8), 3, axis=2)
    out = image_io.compose(rgb, None, True)
    assert out.shape == (9, 11)
    np.testing.assert_array_equal(out, rgb[:, :, 0])


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_matches_opencv_imread_color(tmp_path, orientation, fmt):
    """IMREAD_COLOR applies EXIF orientation: the independent reference for 8-bit RGB."""
    pixels = RNG.integers(0, 256, (20, 30, 3)).astype(np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / f"o.{fmt.lower()}"
    image.save(path, format=fmt, exif=exif, **({"lossless": True} if fmt == "WEBP" else {}))
    loaded = image_io.read_image(path)
    reference = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert loaded.rgb.shape == reference.shape
    assert loaded.rgb.shape[:2] == ((30, 20) if orientation >= 5 else (20, 30))
    np.testing.assert_array_equal(loaded.rgb, reference)


def test_exif_orientation_turns_alpha_too(tmp_path):
    pixels = RNG.integers(0, 256, (6, 10, 4)).astype(np.uint8)
    image = Image.fromarray(pixels, "RGBA")
    exif = image.getexif()
    exif[0x0112] = 6  # stored image is rotated 90 deg counter-clockwise: turn it clockwise
    path = tmp_path / "a.png"
    image.save(path, exif=exif)
    loaded = image_io.read_image(path)
    np.testing.assert_array_equal(loaded.alpha, np.rot90(pixels[:, :, 3], -1))
    np.testing.assert_array_equal(loaded.rgb, np.rot90(pixels[:, :, :3], -1))


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("not an image at all"), "not a readable image"),
        (lambda p: p.write_bytes(_png_header(40000, 100)), "40000x100 is too large"),
        (lambda p: p.write_bytes(_png_header(25000, 25000)), "25000x25000 is too large"),
        (lambda p: p.mkdir(), "is a folder"),
    ],
)
def test_read_errors_are_one_line(tmp_path, make, message):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(ImageError, match=message) as info:
        image_io.read_image(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated_file_is_refused(tmp_path, ext):
    path = tmp_path / f"t{ext}"
    cv2.imwrite(str(path), RNG.integers(0, 256, (200, 200, 3)).astype(np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        image_io.read_image(path)


def test_probe_size_reads_headers_without_decoding(tmp_path):
    for ext in (".png", ".jpg"):
        path = tmp_path / f"p{ext}"
        cv2.imwrite(str(path), np.zeros((37, 53, 3), np.uint8))
        assert image_io.probe_size(path.read_bytes()) == (53, 37)
    assert image_io.probe_size(b"GIF89a....") is None


@pytest.mark.parametrize(
    "name,image,message",
    [
        ("x.bmp", np.zeros((4, 4, 3), np.uint8), "unknown output format"),
        ("x.jpg", np.zeros((4, 4, 3), np.uint16), r"\.jpg cannot hold 16-bit samples; write \.png or \.tif$"),
        (
            "x.png",
            np.zeros((4, 4, 3), np.float32),
            r"\.png cannot hold float32 samples; write \.tif or \.tiff$",
        ),
        ("x.webp", np.zeros((4, 4), np.float32), "cannot hold float32"),
        ("missing/x.png", np.zeros((4, 4, 3), np.uint8), "does not exist"),
    ],
)
def test_write_errors(tmp_path, name, image, message):
    with pytest.raises(ImageError, match=message):
        image_io.write_image(tmp_path / name, image)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_float32_tiff_round_trip(tmp_path, channels):
    stored = RNG.random((9, 14, channels), dtype=np.float32)
    path = tmp_path / "x.tif"
    image_io.write_image(path, stored[:, :, 0] if channels == 1 else stored)
    loaded = image_io.read_image(path)
    assert loaded.rgb.dtype == np.float32 and loaded.grey == (channels == 1)
    back = image_io.compose(loaded.rgb, loaded.alpha, loaded.grey)
    # Grey goes back through the luminance weights, which sum to 1 within an ulp.
    np.testing.assert_allclose(
        back, stored[:, :, 0] if channels == 1 else stored, rtol=0, atol=1e-7 if channels == 1 else 0
    )


@pytest.mark.parametrize("dtype,ext", [(np.uint8, ".png"), (np.uint16, ".png"), (np.float32, ".tif")])
def test_output_extension_holds_the_samples(tmp_path, dtype, ext):
    assert image_io.output_extension(np.dtype(dtype)) == ext
    image_io.check_output(tmp_path / f"x{ext}", np.dtype(dtype))


def test_defocus_map_raw_round_trip_is_exact(tmp_path):
    dmap = RNG.normal(size=(31, 45)).astype(np.float32)
    path = tmp_path / "map.tif"
    image_io.write_map_file(path, dmap)
    back = image_io.read_map_file(path)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, dmap)
    with pytest.raises(ImageError, match="float32 .tif"):
        image_io.write_map_file(tmp_path / "map.png", dmap)


@pytest.mark.parametrize(
    "dtype,value,expected",
    [
        (np.uint8, 255, image_io.MAP_FILE_MAX),
        (np.uint8, 0, 0.0),
        (np.uint16, 32768, 32768 / 65535 * image_io.MAP_FILE_MAX),
    ],
)
def test_defocus_map_file_encoding(tmp_path, dtype, value, expected):
    path = tmp_path / "m.png"
    cv2.imwrite(str(path), np.full((3, 4), value, dtype))
    np.testing.assert_allclose(image_io.read_map_file(path), expected, rtol=1e-6)


def test_defocus_map_float_tiff_from_other_tools(tmp_path):
    dmap = RNG.normal(size=(8, 9)).astype(np.float32)
    path = tmp_path / "m.tif"
    cv2.imwrite(str(path), dmap)
    np.testing.assert_array_equal(image_io.read_map_file(path), dmap)


@pytest.mark.parametrize("map_max,radius_scale_px", [(1.0, 10.0), (2.0, 10.0), (0.5, 8.0)])
def test_colour_map_spans_the_trained_range(map_max, radius_scale_px):
    dmap = np.array([[0.0, map_max / 2, map_max, 3 * map_max]], np.float32)
    colored = image_io.colorize_defocus_map(dmap, radius_scale_px, map_max)
    assert colored.shape == (1 + image_io.LEGEND_HEIGHT, 4, 3) and colored.dtype == np.uint8
    lut = cv2.applyColorMap(np.array([[0, 128, 255]], np.uint8), cv2.COLORMAP_INFERNO)[0]
    np.testing.assert_array_equal(colored[0], [lut[0], lut[1], lut[2], lut[2]])


def test_colour_map_legend_has_a_tick_per_px_step():
    width = 401
    colored = image_io.colorize_defocus_map(np.zeros((5, width), np.float32), 10.0, 1.0)
    tick_rows = colored[5 + 10 : 5 + 15]
    white = np.all(tick_rows == 255, axis=(0, 2))
    # 0 .. 10 px over 401 columns, about one tick per 40 px: steps of 1 px, at x = 40 v.
    assert list(np.flatnonzero(white)) == [40 * v for v in range(11)]
    labels = colored[5 + 15 : 5 + 28]
    for v in range(11):  # every tick has text under it
        assert labels[:, max(0, 40 * v - 6) : 40 * v + 6].max() > 0


@pytest.mark.parametrize(
    "top,intervals,step", [(10, 12, 1), (10, 3, 5), (10, 1, 10), (0.8, 5, 0.2), (40, 4, 10), (25, 6, 5)]
)
def test_tick_step(top, intervals, step):
    assert image_io._tick_step(top, intervals) == pytest.approx(step)


def test_side_by_side_pads_and_labels():
    grey = np.full((10, 6, 3), 200, np.uint8)
    tall = np.zeros((14, 5, 3), np.uint8)
    picture = image_io.side_by_side([("a", grey), ("b", tall)])
    assert picture.shape == (14 + image_io.LABEL_HEIGHT, 6 + image_io.GAP_PX + 5, 3)
    below = picture[image_io.LABEL_HEIGHT :]
    np.testing.assert_array_equal(below[:10, :6], grey)
    assert below[10:, :6].max() == 0  # padding under the shorter panel
    assert picture[: image_io.LABEL_HEIGHT, :6].max() > 0  # its label


@pytest.mark.parametrize(
    "dtype,value,expected",
    [(np.uint8, 51, 51), (np.uint16, 257 * 51, 51), (np.float32, 0.2, 51), (np.float32, 1.7, 255)],
)
def test_display_bgr(dtype, value, expected):
    rgb = np.zeros((2, 3, 3), dtype)
    rgb[..., 0] = value
    shown = image_io.display_bgr(rgb)
    assert shown.dtype == np.uint8
    assert shown[0, 0, 2] == expected and shown[0, 0, 0] == 0  # red lands in BGR's last channel
