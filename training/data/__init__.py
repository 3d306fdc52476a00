"""Training data: defocus rendering, synthetic depth, image sources, datasets, validation set."""

from training.data.datasets import (
    PAIR_LAYOUTS,
    RADIUS_PNG_SCALE,
    DEDDataset,
    PairDataset,
    SyntheticDefocusDataset,
    read_radius_png,
    worker_init_fn,
    write_radius_png,
)
from training.data.depth import synthetic_depth
from training.data.render import (
    Camera,
    Noise,
    blur_by_radius,
    coc_radius,
    disc_kernel,
    gaussian_kernel,
    linear_to_srgb,
    render_defocus,
    sample_camera,
    sample_noise,
    srgb_to_linear,
)
from training.data.sources import (
    TRAIN_PHOTOS,
    VALIDATION_PHOTOS,
    DataError,
    ImageFolderSource,
    SharpImage,
    SkimagePhotos,
    dead_leaves,
    read_image,
)
from training.data.validation import build_validation_set

__all__ = [
    "Camera",
    "DEDDataset",
    "RADIUS_PNG_SCALE",
    "DataError",
    "ImageFolderSource",
    "Noise",
    "PAIR_LAYOUTS",
    "PairDataset",
    "SharpImage",
    "SkimagePhotos",
    "SyntheticDefocusDataset",
    "TRAIN_PHOTOS",
    "VALIDATION_PHOTOS",
    "blur_by_radius",
    "build_validation_set",
    "coc_radius",
    "dead_leaves",
    "disc_kernel",
    "gaussian_kernel",
    "linear_to_srgb",
    "read_radius_png",
    "read_image",
    "render_defocus",
    "sample_camera",
    "sample_noise",
    "srgb_to_linear",
    "synthetic_depth",
    "worker_init_fn",
    "write_radius_png",
]
