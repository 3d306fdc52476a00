"""Defocus rendering: sharp sRGB image + depth -> blurry image + circle-of-confusion map.

Thin lens: a point at depth ``z`` seen by a lens focused at ``z_f`` blurs into a disc
of radius ``A * |1/z - 1/z_f|`` px, ``A = f^2 / (N (z_f - f))`` times the pixel
pitch. Training cares about the radius, not the optics, so ``A`` is chosen so that
the largest radius in the crop equals a sampled ``max_radius_px``.

Blurring follows SYNDOF's ``blur_by_depth.m``: the signed radius is quantised into
layers, each layer's premultiplied colour and coverage are blurred with that
layer's kernel and composited "over" from far to near, and the result is divided
by the accumulated coverage. Unlike SYNDOF, a pixel is split linearly between the
two layers whose radii bracket its own, so the ground-truth map is the continuous
radius rather than the quantised one. Everything happens in linear light.
"""

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Tuple

import cv2
import numpy as np

PSFS = ("disc", "gaussian")

#: Kernels up to this radius run at full resolution; larger ones on a layer
#: downsampled by ``ceil(radius / _MAX_DIRECT_RADIUS)`` (OpenCV switches filter2D
#: to a DFT for kernels over 11x11, which is ~10x slower at 256^2).
_MAX_DIRECT_RADIUS = 4.4
_MIN_LAYER_STEP_PX = 1.0
_DISC_SAMPLES = 8
_SRGB_KNEE = np.float32(0.04045)
_LINEAR_KNEE = np.float32(((0.04045 + 0.055) / 1.055) ** 2.4)


@dataclass(frozen=True)
class Camera:
    """A thin-lens camera reduced to what decides the blur.

    Attributes:
        focus_depth: Depth of the focal plane, in the units of the depth map.
        max_radius_px: Circle-of-confusion radius of the most defocused pixel.
    """

    focus_depth: float
    max_radius_px: float


@dataclass(frozen=True)
class Noise:
    """Poisson-Gaussian sensor noise in linear light: ``std = sqrt(shot * x + read^2)``."""

    shot: float
    read: float


def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    """Decode sRGB values in [0, 1] to linear light (IEC 61966-2-1), float32."""
    image = np.asarray(image, dtype=np.float32)
    # Branch-free (np.where costs ~10x an add): the two pieces meet at the knee,
    # so summing the clamped pieces and subtracting the knee value is exact.
    low = np.minimum(image, _SRGB_KNEE) / np.float32(12.92)
    high = cv2.pow((np.maximum(image, _SRGB_KNEE) + np.float32(0.055)) / np.float32(1.055), 2.4)
    return low + high.reshape(image.shape) - _LINEAR_KNEE


def linear_to_srgb(image: np.ndarray) -> np.ndarray:
    """Encode linear light in [0, 1] to sRGB values, float32 (inputs are clipped)."""
    image = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    low = np.minimum(image, _LINEAR_KNEE) * np.float32(12.92)
    high = np.float32(1.055) * cv2.pow(np.maximum(image, _LINEAR_KNEE), 1.0 / 2.4).reshape(image.shape)
    return low + high - np.float32(1.055 * _LINEAR_KNEE ** (1.0 / 2.4))


def disc_kernel(radius: float) -> np.ndarray:
    """Anti-aliased uniform disc, normalised to sum 1.

    Each weight is the fraction of that pixel's square inside the disc, from an
    8 x 8 grid of samples per pixel, so the unnormalised area is ~``pi r^2``.

    Args:
        radius: Disc radius in px (>= 0). Below 0.5 the kernel is the identity.

    Returns:
        (2h+1, 2h+1) float32 kernel, ``h = ceil(radius - 0.5)`` (0 below 0.5).
    """
    half = max(0, math.ceil(radius - 0.5))
    offsets = (np.arange(_DISC_SAMPLES) + 0.5) / _DISC_SAMPLES - 0.5
    fine = (np.arange(-half, half + 1)[:, None] + offsets[None, :]).ravel()
    inside = fine[:, None] ** 2 + fine[None, :] ** 2 <= radius**2
    side = 2 * half + 1
    coverage = inside.reshape(side, _DISC_SAMPLES, side, _DISC_SAMPLES).mean(axis=(1, 3))
    if half == 0:
        return np.ones((1, 1), np.float32)
    return (coverage / coverage.sum()).astype(np.float32)


def gaussian_kernel(radius: float) -> np.ndarray:
    """Gaussian with ``sigma = radius / 2`` (SYNDOF's ``(CoC - 1) / 4`` for diameter CoC ~ 2r).

    Args:
        radius: Circle-of-confusion radius in px (>= 0); 0 gives the identity.

    Returns:
        (2h+1, 2h+1) float32 kernel normalised to sum 1, ``h = ceil(3 sigma)``.
    """
    line = _gaussian_line(radius)
    return line @ line.T


def _gaussian_line(radius: float) -> np.ndarray:
    """(2h+1, 1) float32 1-D factor of ``gaussian_kernel``."""
    sigma = radius / 2.0
    if sigma <= 0:
        return np.ones((1, 1), np.float32)
    return cv2.getGaussianKernel(2 * math.ceil(3 * sigma) + 1, sigma, cv2.CV_32F)


@lru_cache(maxsize=512)
def _kernel(psf: str, radius: float) -> np.ndarray:
    """Disc kernel (2-D) or the 1-D factor of the separable Gaussian."""
    return disc_kernel(radius) if psf == "disc" else _gaussian_line(radius)


def _filter(plane: np.ndarray, psf: str, radius: float, dst: Optional[np.ndarray] = None) -> np.ndarray:
    kernel = _kernel(psf, radius)
    if psf == "disc":
        return cv2.filter2D(plane, -1, kernel, dst=dst, borderType=cv2.BORDER_REFLECT_101)
    return cv2.sepFilter2D(plane, -1, kernel, kernel, dst=dst, borderType=cv2.BORDER_REFLECT_101)


def _support(psf: str, radius: float) -> int:
    """Half-width in px beyond which ``_blur`` leaves a layer untouched."""
    half = radius + 0.5 if psf == "disc" else 1.5 * radius
    return math.ceil(half) + math.ceil(radius / _MAX_DIRECT_RADIUS)


def _blur_planes(planes: np.ndarray, psf: str, radius: float) -> np.ndarray:
    """Blur each (h, w) plane of ``planes`` (C, h, w) with the PSF of ``radius`` px.

    Large kernels run on planes downsampled by an integer factor ``f``; the
    resampling adds ~``(3 f^2 - 1) / 12`` px^2 of variance per axis (area
    average + linear upsampling), which is removed from the kernel so the
    second moment, i.e. the blur size, stays that of the requested PSF.
    """
    out = np.empty(planes.shape, np.float32)
    factor = max(1, math.ceil(radius / _MAX_DIRECT_RADIUS))
    if factor == 1:
        for plane, dst in zip(planes, out):
            _filter(plane, psf, radius, dst)
        return out
    height, width = planes.shape[1:]
    extra = (3 * factor**2 - 1) / 12.0
    per_axis = radius**2 / 4.0  # variance per axis: disc r^2/4, Gaussian (r/2)^2
    low_radius = round(2.0 * math.sqrt(max(per_axis - extra, 0.0)) / factor, 3)
    # Pad to a multiple of the factor so the area average uses whole f x f cells.
    pad_y, pad_x = -height % factor, -width % factor
    small_size = ((width + pad_x) // factor, (height + pad_y) // factor)
    for plane, dst in zip(planes, out):
        plane = cv2.copyMakeBorder(plane, 0, pad_y, 0, pad_x, cv2.BORDER_REFLECT_101)
        small = cv2.resize(plane, small_size, interpolation=cv2.INTER_AREA)
        small = _filter(small, psf, low_radius)
        dst[...] = cv2.resize(small, (width + pad_x, height + pad_y), interpolation=cv2.INTER_LINEAR)[
            :height, :width
        ]
    return out


def _layer_levels(signed_radius: np.ndarray, max_layers: int) -> Tuple[float, int, int]:
    """Uniform radius levels ``k * step`` (k0 <= k <= k1) bracketing every pixel; 0 is one of them."""
    low, high = float(signed_radius.min()), float(signed_radius.max())
    step = max(_MIN_LAYER_STEP_PX, (high - low) / max(max_layers - 2, 1))
    while math.ceil(high / step) - math.floor(low / step) + 1 > max_layers:
        step *= 1.05
    return step, math.floor(low / step), math.ceil(high / step)


def _compensated_position(position: np.ndarray) -> np.ndarray:
    """Warp layer positions so that "over" compositing mixes two layers linearly.

    A pixel at fraction ``t`` between levels gives weight ``u`` to the nearer
    and ``1 - u`` to the farther; compositing then attenuates the farther part
    by ``1 - u``, so its effective share of the nearer kernel is
    ``u / (u + (1 - u)^2)``. Solving that for ``t`` gives
    ``u = 2t / (1 + t + sqrt((1 + t)^2 - 4 t^2))``.
    """
    lower = np.floor(position)
    t = position - lower
    root = np.sqrt(np.maximum((1.0 + t) ** 2 - 4.0 * t * t, 0.0))
    return lower + 2.0 * t / (1.0 + t + root)


def blur_by_radius(
    linear: np.ndarray, signed_radius: np.ndarray, psf: str = "disc", max_layers: int = 12
) -> np.ndarray:
    """Layered depth-of-field blur with occlusion, in linear light.

    Args:
        linear: (H, W, 3) float32 linear-light image.
        signed_radius: (H, W) circle-of-confusion radius in px, signed so that a
            larger value is nearer the camera (positive in front of the focal
            plane, negative behind it); ``abs`` is the blur radius.
        psf: ``"disc"`` (default) or ``"gaussian"`` (sigma = radius / 2).
        max_layers: Upper bound on the number of depth layers (default 12).

    Returns:
        (H, W, 3) float32 blurred linear image.
    """
    if psf not in PSFS:
        raise ValueError(f"unknown psf {psf!r}; choose one of {PSFS}")
    step, first, last = _layer_levels(signed_radius, max_layers)
    position = _compensated_position(signed_radius / np.float32(step))
    # Pixel (y, x) lies in levels floor(p) and ceil(p): per-row/column level
    # ranges give each level a bounding box without a full-image pass per level.
    row_lo, row_hi = np.floor(position.min(1)), np.ceil(position.max(1))
    col_lo, col_hi = np.floor(position.min(0)), np.ceil(position.max(0))
    height, width = signed_radius.shape
    # Planar (channel-first) buffers: numpy broadcasts a per-pixel weight over
    # a leading axis ~8x faster than over a trailing axis of 4.
    source = np.concatenate([linear.transpose(2, 0, 1), np.ones((1, height, width), np.float32)])
    acc = np.zeros((4, height, width), np.float32)
    for level in range(first, last + 1):  # far (most negative) to near
        rows = np.flatnonzero((row_lo <= level) & (row_hi >= level))
        cols = np.flatnonzero((col_lo <= level) & (col_hi >= level))
        if rows.size == 0 or cols.size == 0:
            continue
        radius = abs(level * step)
        half = 0 if radius < 0.5 else _support(psf, radius)
        y0, y1 = max(rows[0] - half, 0), min(rows[-1] + half + 1, height)
        x0, x1 = max(cols[0] - half, 0), min(cols[-1] + half + 1, width)
        # Hat weight 1 - |p - level|: linear split between the two nearest levels.
        weight = np.subtract(position[y0:y1, x0:x1], np.float32(level))
        np.abs(weight, out=weight)
        np.subtract(np.float32(1.0), weight, out=weight)
        np.maximum(weight, np.float32(0.0), out=weight)
        layer = source[:, y0:y1, x0:x1] * weight
        if radius >= 0.5:
            layer = _blur_planes(layer, psf, radius)
        roi = acc[:, y0:y1, x0:x1]
        roi *= np.float32(1.0) - layer[3]
        roi += layer
    return cv2.merge(list(acc[:3] / np.maximum(acc[3], np.float32(1e-6))))


def coc_radius(depth: np.ndarray, camera: Camera) -> np.ndarray:
    """Signed circle-of-confusion radius in px (positive nearer than focus).

    Args:
        depth: (H, W) float32 depth, > 0.
        camera: focal plane and the radius the most defocused pixel gets.

    Returns:
        (H, W) float32 ``A * (1/z - 1/z_f)`` with ``max |.| == camera.max_radius_px``
        (all zeros when every pixel lies on the focal plane).
    """
    defocus = 1.0 / depth.astype(np.float32) - np.float32(1.0 / camera.focus_depth)
    peak = float(np.abs(defocus).max())
    if peak < 1e-12:
        return np.zeros_like(defocus)
    return defocus * np.float32(camera.max_radius_px / peak)


def sample_camera(rng: np.random.Generator, depth: np.ndarray, max_radius_px: float = 10.0) -> Camera:
    """Draw a focus distance and aperture for a depth map.

    The largest blur radius is uniform in [0, ``max_radius_px``]. The focal plane
    sits at a random depth quantile of the scene (85%), or outside the scene's
    depth range (15%, half nearer, half farther) so that everything is blurred.
    """
    max_radius = float(rng.uniform(0.0, max_radius_px))
    near, far = float(depth.min()), float(depth.max())
    choice = rng.random()
    if choice < 0.85:
        focus = float(np.quantile(depth, rng.random()))
    elif choice < 0.925:
        focus = near * float(rng.uniform(0.5, 0.95))
    else:
        focus = far * float(rng.uniform(1.1, 3.0))
    return Camera(focus_depth=focus, max_radius_px=max_radius)


def sample_noise(rng: np.random.Generator, max_shot: float = 2e-3, max_read: float = 1e-3) -> Noise:
    """Draw a small noise level: shot and read log-uniform over two decades below their maxima."""
    return Noise(
        shot=float(max_shot * 10 ** rng.uniform(-2, 0)), read=float(max_read * 10 ** rng.uniform(-2, 0))
    )


def add_noise(linear: np.ndarray, noise: Noise, rng: np.random.Generator) -> np.ndarray:
    """Add Poisson-Gaussian noise (Gaussian approximation) to a linear image, clipped to [0, 1].

    The normal draws come from OpenCV's thread-local generator seeded from ``rng``
    (2.5x faster than numpy's), so the result is still a function of ``rng``.
    """
    linear = np.clip(linear, 0.0, 1.0)
    std = np.sqrt(linear * np.float32(noise.shot) + np.float32(noise.read**2))
    normal = np.empty((linear.size, 1), np.float32)  # one channel: randn's scalar std is per channel
    cv2.setRNGSeed(int(rng.integers(2**31)))
    cv2.randn(normal, np.zeros(1), np.ones(1))
    return np.clip(linear + std * normal.reshape(linear.shape), 0.0, 1.0)


def render_defocus(
    sharp: np.ndarray,
    depth: np.ndarray,
    camera: Camera,
    *,
    psf: str = "disc",
    noise: Optional[Noise] = None,
    rng: Optional[np.random.Generator] = None,
    quantize: bool = True,
    max_layers: int = 12,
) -> Tuple[np.ndarray, np.ndarray]:
    """Render defocus blur.

    Args:
        sharp: (H, W, 3) float32 sRGB image in [0, 1].
        depth: (H, W) float32 depth, > 0.
        camera: see ``sample_camera``.
        psf: ``"disc"`` (default) or ``"gaussian"``.
        noise: sensor noise added in linear light; None (default) for none.
        rng: generator for the noise; required when ``noise`` is given.
        quantize: round the output to 8-bit levels (default True).
        max_layers: depth layers of the compositing (default 12).

    Returns:
        blurry: (H, W, 3) float32 sRGB in [0, 1].
        radius: (H, W) float32 ground-truth circle-of-confusion radius in px (>= 0).
    """
    if sharp.ndim != 3 or sharp.shape[2] != 3 or sharp.shape[:2] != depth.shape:
        raise ValueError(f"need sharp (H, W, 3) and depth (H, W); got {sharp.shape} and {depth.shape}")
    if noise is not None and rng is None:
        raise ValueError("render_defocus: noise needs an rng")
    signed = coc_radius(depth, camera)
    linear = blur_by_radius(srgb_to_linear(sharp), signed, psf=psf, max_layers=max_layers)
    if noise is not None and rng is not None:
        linear = add_noise(linear, noise, rng)
    blurry = linear_to_srgb(linear)
    if quantize:
        blurry = np.rint(blurry * np.float32(255.0)) / np.float32(255.0)
    return blurry.astype(np.float32), np.abs(signed)
