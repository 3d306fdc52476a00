"""Output sanity as an invariant: adversarial but valid images through every backend that
runs here give a finite, in-range output of the input's shape and type, and a finite map
inside the trained range."""

import numpy as np
import pytest

from runtime import Deblurrer, load_bundle
from runtime.errors import DeblurError

#: (backend, precision) pairs tried; those that cannot run on this machine are skipped.
_BACKENDS = [
    ("onnxruntime", "fp32"),
    ("onnxruntime", "fp16"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("tensorrt", "fp16"),
    ("tensorrt", "fp32"),
]
_SHAPE = (131, 141)  # odd: padding; over 128 px: several restore tiles with tile=128


def _adversarial(kind: str, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float in [0, 1]."""
    h, w = _SHAPE
    if kind == "extreme_contrast":  # black / white halves, and a white dot on black
        image = np.zeros((h, w, 3))
        image[:, w // 2 :] = 1.0
        image[h // 4, w // 4] = 1.0
        return image
    if kind in ("black", "white", "grey"):
        return np.full((h, w, 3), {"black": 0.0, "white": 1.0, "grey": 0.5}[kind])
    if kind == "noise":
        return rng.random((h, w, 3))
    if kind == "checkerboard":
        return np.repeat((np.indices((h, w)).sum(axis=0) % 2)[:, :, None], 3, axis=2).astype(float)
    if kind == "near_black":
        return rng.integers(0, 3, (h, w, 3)) / 255.0
    if kind == "near_white":
        return rng.integers(253, 256, (h, w, 3)) / 255.0
    raise AssertionError(kind)


def _as(image: np.ndarray, dtype) -> np.ndarray:
    if dtype == np.float32:
        return image.astype(np.float32)
    top = np.iinfo(dtype).max
    return (image * top + 0.5).astype(dtype)


@pytest.fixture(scope="module", params=_BACKENDS, ids=lambda p: f"{p[0]}-{p[1]}")
def deblurrer(request):
    backend, precision = request.param
    try:
        deblurrer = Deblurrer(load_bundle(), backend=backend, precision=precision, tile=128, threads=1)
    except DeblurError as err:
        if (backend, precision) == ("onnxruntime", "fp32"):
            raise  # runs everywhere: the invariant is never checked on nothing
        pytest.skip(f"{backend} {precision} does not run here: {err}")
    yield deblurrer
    deblurrer.close()


KINDS = ["extreme_contrast", "black", "white", "grey", "noise", "checkerboard", "near_black", "near_white"]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("kind", KINDS)
def test_adversarial_images_give_finite_bounded_output(deblurrer, kind, dtype):
    image = _as(_adversarial(kind, np.random.default_rng(KINDS.index(kind))), dtype)
    # The largest scale accepted (far beyond the trained range; once per kind), then the default.
    for scale in (10.0, 1.0) if dtype == np.uint8 else (1.0,):
        out, dmap = deblurrer.run(image, defocus_scale=scale)
        assert out.shape == image.shape and out.dtype == image.dtype
        assert dmap.shape == _SHAPE and np.isfinite(dmap).all()
        assert 0.0 <= dmap.min() and dmap.max() <= scale * deblurrer.bundle.map_max + 1e-6
        if dtype == np.float32:
            assert np.isfinite(out).all() and 0.0 <= out.min() and out.max() <= 1.0
    if kind in ("black", "white", "grey"):  # with the model's own map a flat image stays flat
        levels = out.astype(np.float64) / (1.0 if dtype == np.float32 else np.iinfo(dtype).max)
        assert np.ptp(levels) < 0.05, (levels.min(), levels.max())
