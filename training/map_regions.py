"""Where the estimated defocus map goes wrong: its error by kind of image region.

Blur shows only where the image has structure, so an estimator's error depends on
what is under a pixel. Each pixel of a validation scene gets one label, decided on
the sharp image and the true map:

- ``occlusion``: within ``OCCLUSION_RADIUS_PX`` of a depth discontinuity (a jump of
  the true map), where the blur of two layers mixes;
- ``flat``: little local contrast (root mean squared gradient below ``FLAT_GRADIENT``);
- ``edge``: contrast along one dominant orientation (structure-tensor coherence
  above ``EDGE_COHERENCE``);
- ``texture``: the rest, contrast in many orientations.

The occlusion band is also split at its depth edge (``SIDES``): an estimate that blurs
across the edge reads the blurrier layer too low and the sharper one too high, which
the two sides' bias shows and the band's MAE does not.
"""

from typing import Dict

import cv2
import numpy as np

REGIONS = ("flat", "texture", "edge", "occlusion")
SIDES = ("blurrier", "sharper")
#: ``map_error_by_region``'s names of the occlusion band's sides.
SIDE_REGIONS = tuple(f"occlusion_{side}" for side in SIDES)
OCCLUSION_RADIUS_PX = 4
#: A true-map jump of this many map units (1.5 px) between neighbours marks a depth
#: discontinuity; smaller steps are the gentle slopes of one surface.
OCCLUSION_STEP = 0.15
FLAT_GRADIENT = 0.02
EDGE_COHERENCE = 0.6
#: Gaussian window of the local gradient statistics.
WINDOW_SIGMA_PX = 2.0


def region_labels(sharp: np.ndarray, true_map: np.ndarray) -> np.ndarray:
    """Label every pixel with an index into ``REGIONS``.

    Args:
        sharp: (H, W, 3) float RGB in [0, 1].
        true_map: (H, W) float, map units.

    Returns:
        (H, W) uint8 labels.
    """
    grey = cv2.cvtColor(sharp.astype(np.float32), cv2.COLOR_RGB2GRAY)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3) / 8
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3) / 8
    smooth = lambda a: cv2.GaussianBlur(a, (0, 0), WINDOW_SIGMA_PX)  # noqa: E731
    jxx, jyy, jxy = smooth(gx * gx), smooth(gy * gy), smooth(gx * gy)
    energy = jxx + jyy
    coherence = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / np.maximum(energy, 1e-12)
    labels = np.full(grey.shape, REGIONS.index("texture"), np.uint8)
    labels[coherence > EDGE_COHERENCE] = REGIONS.index("edge")
    labels[np.sqrt(energy) < FLAT_GRADIENT] = REGIONS.index("flat")
    true_map = true_map.astype(np.float32)
    jump = np.zeros(true_map.shape, bool)
    jump[:, 1:] |= np.abs(np.diff(true_map, axis=1)) > OCCLUSION_STEP
    jump[1:, :] |= np.abs(np.diff(true_map, axis=0)) > OCCLUSION_STEP
    size = 2 * OCCLUSION_RADIUS_PX + 1
    near = cv2.dilate(jump.astype(np.uint8), np.ones((size, size), np.uint8)) > 0
    labels[near] = REGIONS.index("occlusion")
    return labels


def occlusion_sides(labels: np.ndarray, true_map: np.ndarray) -> Dict[str, np.ndarray]:
    """The occlusion band of ``labels`` split at its depth edges: ``blurrier`` where the
    true map lies above its local mean (the blurrier layer), ``sharper`` in the rest of
    the band. The mean's window reaches a pixel further than the band, so that every
    pixel of the band sees across its edge. (H, W) -> a bool (H, W) mask per ``SIDES``."""
    size = 2 * OCCLUSION_RADIUS_PX + 3
    true_map = true_map.astype(np.float32)
    above = true_map > cv2.blur(true_map, (size, size), borderType=cv2.BORDER_REFLECT)
    band = labels == REGIONS.index("occlusion")
    return dict(zip(SIDES, (band & above, band & ~above)))


def map_error_by_region(sharp: np.ndarray, true_map: np.ndarray, estimate: np.ndarray) -> Dict[str, dict]:
    """Per region, and per side of the occlusion band as ``occlusion_blurrier`` and
    ``occlusion_sharper``: the pixels' share, the map's mean absolute error and mean
    bias (estimate - truth, map units). Those with no pixel are left out."""
    labels = region_labels(sharp, true_map)
    error = estimate.astype(np.float64) - true_map
    masks = {name: labels == index for index, name in enumerate(REGIONS)}
    masks.update(zip(SIDE_REGIONS, occlusion_sides(labels, true_map).values()))
    return {
        name: {
            "share": float(mask.mean()),
            "mae": float(np.abs(error[mask]).mean()),
            "bias": float(error[mask].mean()),
        }
        for name, mask in masks.items()
        if mask.any()
    }
