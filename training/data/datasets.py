"""Torch datasets: rendered on the fly, DED-style triplets, and blurry/sharp pairs.

Every item is a dict of tensors:

* ``blurry``, ``sharp``: (3, H, W) float32 sRGB in [0, 1];
* ``defocus_map``: (1, H, W) float32, circle-of-confusion radius in px divided by
  ``MAP_RADIUS_SCALE_PX`` (zeros when the data has no map);
* ``has_map``: bool scalar tensor.

Item ``i`` is a function of ``(seed, i)`` only (``np.random.default_rng([seed, i])``),
so a resumed run, or any DataLoader worker, sees the same data.
"""

import logging
import math
import signal
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from training.data import curation
from training.data.depth import synthetic_depth
from training.data.render import PSFS, Camera, render_defocus, sample_camera, sample_noise
from training.data.sources import DataError, SharpImage, dead_leaves, list_images, read_image, split_readable
from training.presets import MAP_RADIUS_SCALE_PX

log = logging.getLogger(__name__)

#: Training's DED-style map PNGs hold ``radius_px * RADIUS_PNG_SCALE`` as 16-bit integers
#: (0.001 px steps up to 65.5 px): blur-disc radius in pixels, not map units. DED's own
#: maps are not public; this is our format. The runtime's map files are another format
#: (``runtime.image_io.read_map_file``: map units, v / 65535 * 4 in a 16-bit file).
RADIUS_PNG_SCALE = 1000.0
#: Random window positions ``scaled_crop`` weighs against the photo's own blur.
CROP_TRIES = 8
#: Pair-only folder layouts, tried in order: (blurry folder, sharp folder).
PAIR_LAYOUTS = (("blurry", "sharp"), ("source", "target"), ("inputC", "target"))


def worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one OpenCV thread per worker, the workers are the
    parallelism.

    SIGTERM ends a worker the way Ctrl-C does: as ``KeyboardInterrupt``, on which
    PyTorch's worker loop returns and the worker exits with status 0. A stop sent to
    the whole process group (``pkill -f``, ``kill -- -PGID``, a service manager) reaches
    the workers too, and a worker killed by the signal itself would make PyTorch's
    SIGCHLD handler raise inside the trainer's step under way, before it is saved.
    """
    cv2.setNumThreads(1)
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def make_item(
    blurry: np.ndarray, sharp: np.ndarray, radius_px: Optional[np.ndarray]
) -> Dict[str, torch.Tensor]:
    """HWC numpy arrays -> the item dict (``radius_px`` None -> zero map, ``has_map`` False)."""

    def chw(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32))

    has_map = radius_px is not None
    if radius_px is None:
        radius_px = np.zeros(blurry.shape[:2], np.float32)
    return {
        "blurry": chw(blurry),
        "sharp": chw(sharp),
        "defocus_map": chw(radius_px[..., None] / np.float32(MAP_RADIUS_SCALE_PX)),
        "has_map": torch.tensor(has_map),
    }


def dihedral(rng: np.random.Generator, arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
    """Apply one random element of the dihedral group (flip, 90-degree turns) to all arrays (H, W[, C])."""
    turns, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
    out = []
    for array in arrays:
        array = np.rot90(array, turns, axes=(0, 1))
        out.append(array[:, ::-1] if flip else array)
    return out


def random_crop(rng: np.random.Generator, arrays: Sequence[np.ndarray], crop: int) -> List[np.ndarray]:
    """Same random ``crop`` x ``crop`` window of all arrays; smaller arrays are reflect-padded first.

    Padding, not resizing: resizing a blurry image would change its blur radius.
    """
    height, width = arrays[0].shape[:2]
    pad_y, pad_x = max(crop - height, 0), max(crop - width, 0)
    if pad_y or pad_x:
        arrays = [cv2.copyMakeBorder(a, 0, pad_y, 0, pad_x, cv2.BORDER_REFLECT_101) for a in arrays]
        height, width = height + pad_y, width + pad_x
    y0, x0 = int(rng.integers(height - crop + 1)), int(rng.integers(width - crop + 1))
    return [a[y0 : y0 + crop, x0 : x0 + crop] for a in arrays]


def scaled_crop(
    rng: np.random.Generator,
    photo: SharpImage,
    crop: int,
    min_scale: float,
    blurred: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Random square window of a sharp photo, resampled to ``crop`` x ``crop``.

    The scale is uniform in [``min_scale``, 1] (downscaling makes photos sharper
    and varies texture size); a photo whose shorter side is below ``crop`` is
    upscaled just enough instead. Of ``CROP_TRIES`` random positions the window
    takes the first with the fewest tiles the photo itself has blurred
    (``curation.blurred_tiles``): the renderer's true map says 0 there, so a crop of
    the photo's own bokeh would teach that blur is sharp. Depth is resampled
    nearest-neighbour so no depth appears between two surfaces. ``blurred``: the photo's
    ``curation.blurred_tiles``, if known.
    """
    height, width = photo.image.shape[:2]
    fit = crop / min(height, width)
    scale = fit if fit >= 1.0 else float(rng.uniform(max(min_scale, fit), 1.0))
    window = min(math.ceil(crop / scale), height, width)
    corners = [
        (int(rng.integers(height - window + 1)), int(rng.integers(width - window + 1)))
        for _ in range(CROP_TRIES)
    ]
    blurred = curation.blurred_tiles(photo.image) if blurred is None else blurred
    y0, x0 = min(corners, key=lambda c: curation.blurred_share(blurred, c[0], c[1], window))
    image = photo.image[y0 : y0 + window, x0 : x0 + window]
    method = cv2.INTER_AREA if window > crop else cv2.INTER_CUBIC
    image = np.clip(cv2.resize(image, (crop, crop), interpolation=method), 0.0, 1.0)
    if photo.depth is None:
        return image, None
    depth = cv2.resize(
        photo.depth[y0 : y0 + window, x0 : x0 + window], (crop, crop), interpolation=cv2.INTER_NEAREST
    )
    return image, depth


class _SeededDataset(Dataset):
    """``length`` items; item ``i`` draws its randomness from ``default_rng([seed, i])``."""

    length: int
    seed: int

    def __len__(self) -> int:
        return self.length

    def _rng(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        return np.random.default_rng([self.seed, index])


class SyntheticDefocusDataset(_SeededDataset):
    """Sharp images blurred on the fly with random depth and camera.

    Per item: pick dead leaves (probability ``dead_leaves_fraction``) or a photo
    uniformly over all images of all sources; take a ``scaled_crop``; flip/rotate;
    take the photo's own depth (half the time, when it has one) or a
    ``synthetic_depth``; draw a camera and a noise level; ``render_defocus``.
    Rendering happens at crop size, after cropping.

    Args:
        sources: objects with ``__len__`` and ``load(i) -> SharpImage``
            (``ImageFolderSource``, ``SkimagePhotos``); may be empty when
            ``dead_leaves_fraction`` is 1.
        crop: side of the square output (default 256).
        length: items per epoch (default 10000).
        seed: item ``i`` depends on ``(seed, i)`` only (default 0).
        max_radius_px: largest circle-of-confusion radius drawn (default 10).
        psf: ``"disc"`` (default) or ``"gaussian"``.
        dead_leaves_fraction: share of dead-leaves items (default 0.25).
        noise: add sensor noise and 8-bit quantisation (default True).
        min_scale: smallest photo downscale (default 0.5).
        in_focus_fraction: share of items rendered wholly in focus (map 0 everywhere,
            the blurry input is the sharp image plus noise), so the estimator learns
            to read 0 on sharp content and the restorer to leave it alone (default 0).
        uniform_fraction: share of items blurred by one radius everywhere (flat
            depth, radius uniform in [0.5, ``max_radius_px``]) (default 0).
    """

    def __init__(
        self,
        sources: Sequence = (),
        crop: int = 256,
        length: int = 10000,
        seed: int = 0,
        max_radius_px: float = 10.0,
        psf: str = "disc",
        dead_leaves_fraction: float = 0.25,
        noise: bool = True,
        min_scale: float = 0.5,
        in_focus_fraction: float = 0.0,
        uniform_fraction: float = 0.0,
    ):
        if psf not in PSFS:
            raise ValueError(f"unknown psf {psf!r}; choose one of {PSFS}")
        if not 0.0 <= dead_leaves_fraction <= 1.0:
            raise ValueError(f"dead_leaves_fraction must be in [0, 1], got {dead_leaves_fraction}")
        self.index = [(source, i) for source in sources for i in range(len(source))]
        if not self.index and dead_leaves_fraction < 1.0:
            raise DataError("no sharp images: give sources or set dead_leaves_fraction=1")
        self.crop, self.length, self.seed = crop, length, seed
        self.max_radius_px, self.psf, self.noise = max_radius_px, psf, noise
        self.dead_leaves_fraction, self.min_scale = dead_leaves_fraction, min_scale
        if min(in_focus_fraction, uniform_fraction) < 0 or in_focus_fraction + uniform_fraction > 1:
            raise ValueError(
                "in_focus_fraction and uniform_fraction must be >= 0 with a sum <= 1, "
                f"got {in_focus_fraction} and {uniform_fraction}"
            )
        self.in_focus_fraction, self.uniform_fraction = in_focus_fraction, uniform_fraction
        self._blurred: Dict[int, np.ndarray] = {}  # per photo of ``index``: its blurred tiles

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        rng = self._rng(index)
        sharp, depth = self._sharp_and_depth(rng)
        depth, camera = self._camera(rng, depth)
        noise = sample_noise(rng) if self.noise else None
        blurry, radius = render_defocus(
            sharp, depth, camera, psf=self.psf, noise=noise, rng=rng, quantize=self.noise
        )
        return make_item(blurry, sharp, radius)

    def _camera(self, rng: np.random.Generator, depth: np.ndarray) -> Tuple[np.ndarray, Camera]:
        """The depth to render with and a camera: wholly in focus, uniformly blurred, or
        ``sample_camera``'s focal plane in the scene. Without those two kinds the
        random stream is the one of earlier versions, so old runs resume exactly."""
        if self.in_focus_fraction or self.uniform_fraction:
            kind = rng.random()
            if kind < self.in_focus_fraction:
                return depth, Camera(focus_depth=float(depth.min()), max_radius_px=0.0)
            if kind < self.in_focus_fraction + self.uniform_fraction:
                radius = float(rng.uniform(min(0.5, self.max_radius_px), self.max_radius_px))
                return np.ones_like(depth), Camera(focus_depth=2.0, max_radius_px=radius)
        return depth, sample_camera(rng, depth, self.max_radius_px)

    def _sharp_and_depth(self, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        if rng.random() < self.dead_leaves_fraction:
            image, depth = dead_leaves(rng, self.crop, self.crop)
            if rng.random() < 0.5:
                depth = synthetic_depth(rng, image)
            return image, depth
        k = int(rng.integers(len(self.index)))
        source, i = self.index[k]
        photo = source.load(i)
        if k not in self._blurred:
            self._blurred[k] = curation.blurred_tiles(photo.image)
        image, known_depth = scaled_crop(rng, photo, self.crop, self.min_scale, self._blurred[k])
        use_known = known_depth is not None and rng.random() < 0.5
        depth = known_depth if use_known and known_depth is not None else synthetic_depth(rng, image)
        image, depth = dihedral(rng, [image, depth])
        return np.ascontiguousarray(image), np.ascontiguousarray(depth)


def read_radius_png(path: Path, map_scale: float = RADIUS_PNG_SCALE) -> np.ndarray:
    """Read a DED-style radius PNG as blur-disc radius in px: (H, W) float32 = stored value
    / ``map_scale`` (default ``RADIUS_PNG_SCALE``, 1000 per px).

    Colour PNGs are read as grey. Raises ``DataError`` when the file cannot be decoded.
    """
    data = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH)
    if data is None:
        raise DataError(f"cannot read defocus map {path}")
    return data.astype(np.float32) / np.float32(map_scale)


def write_radius_png(path: Path, radius_px: np.ndarray, map_scale: float = RADIUS_PNG_SCALE) -> None:
    """Write blur-disc radius in px as a DED-style 16-bit PNG of ``round(radius * map_scale)``
    (clipped to 65535; ``read_radius_png`` reads it back)."""
    data = np.clip(np.rint(radius_px * map_scale), 0, 65535).astype(np.uint16)
    if not cv2.imwrite(str(path), data):
        raise DataError(f"cannot write defocus map {path}")


class _MatchedFolders(_SeededDataset):
    """Files matched by stem across sibling folders, randomly cropped and augmented.

    Item ``i`` uses group ``i % groups``; with ``length`` above the group count,
    each repetition gets a different crop.
    """

    def __init__(
        self,
        root: Path,
        folders: Sequence[str],
        crop: Optional[int],
        seed: int,
        length: Optional[int],
        augment: bool,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"dataset folder not found: {self.root}")
        files = [{p.stem: p for p in list_images(self.root / name, name)} for name in folders]
        stems = sorted(set.intersection(*(set(f) for f in files)))
        if not stems:
            raise DataError(f"no file names common to {', '.join(folders)} under {self.root}")
        candidates = [p for stem in stems for p in (f[stem] for f in files)]
        _, unreadable = split_readable(candidates)
        self.skipped = unreadable
        if unreadable:
            log.warning("skipped %d unreadable file(s) under %s", len(unreadable), self.root)
        bad = set(unreadable)
        self.groups = [
            tuple(f[stem] for f in files) for stem in stems if not any(f[stem] in bad for f in files)
        ]
        if not self.groups:
            raise DataError(f"no readable {'/'.join(folders)} group under {self.root}")
        self.crop, self.seed, self.augment = crop, seed, augment
        self.length = length or len(self.groups)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        rng = self._rng(index)
        arrays = self._read(index)
        if self.crop is not None:
            arrays = random_crop(rng, arrays, self.crop)
        if self.augment:
            arrays = dihedral(rng, arrays)
        return self._item(arrays)

    def _read(self, index: int) -> List[np.ndarray]:
        """Arrays of group ``index`` or, if a file fails to decode, of the next group."""
        for step in range(len(self.groups)):
            group = self.groups[(index + step) % len(self.groups)]
            try:
                arrays = self._load(group)
            except DataError as error:
                log.warning("%s; using the next sample", error)
                continue
            shapes = {a.shape[:2] for a in arrays}
            if len(shapes) > 1:
                raise DataError(f"size mismatch in {group[0].stem}: {sorted(shapes)}")
            return arrays
        raise DataError(f"no sample under {self.root} could be decoded")

    def _load(self, group: Tuple[Path, ...]) -> List[np.ndarray]:
        return [read_image(path) for path in group]

    def _item(self, arrays: List[np.ndarray]) -> Dict[str, torch.Tensor]:
        return make_item(arrays[0], arrays[1], None)


class DEDDataset(_MatchedFolders):
    """DED-style triplets: ``root/blurry``, ``root/sharp``, ``root/defocus_map``, matched by stem.

    A map PNG holds the circle-of-confusion radius in px times ``map_scale``
    (default 1000, as 16-bit; see ``write_radius_png``).

    Args:
        root: folder holding the three sub-folders.
        crop: random square crop side (default 256; None keeps whole images,
            batch size 1 then); smaller images are reflect-padded.
        seed: item ``i`` depends on ``(seed, i)`` only (default 0).
        length: items per epoch (default: number of triplets).
        augment: random flips and 90-degree turns (default True).
        map_scale: stored value per px of radius (default 1000).

    Raises:
        DataError: missing/empty folders, no stem common to all three, or none readable.
    """

    def __init__(
        self,
        root: Path,
        crop: Optional[int] = 256,
        seed: int = 0,
        length: Optional[int] = None,
        augment: bool = True,
        map_scale: float = RADIUS_PNG_SCALE,
    ):
        super().__init__(root, ("blurry", "sharp", "defocus_map"), crop, seed, length, augment)
        self.map_scale = map_scale

    def _load(self, group: Tuple[Path, ...]) -> List[np.ndarray]:
        return [read_image(group[0]), read_image(group[1]), read_radius_png(group[2], self.map_scale)]

    def _item(self, arrays: List[np.ndarray]) -> Dict[str, torch.Tensor]:
        return make_item(arrays[0], arrays[1], arrays[2])


def find_pair_layout(root: Path) -> Tuple[str, str]:
    """First of ``PAIR_LAYOUTS`` whose two folders exist under ``root``."""
    for blurry, sharp in PAIR_LAYOUTS:
        if (Path(root) / blurry).is_dir() and (Path(root) / sharp).is_dir():
            return blurry, sharp
    layouts = ", ".join(f"{b}/ + {s}/" for b, s in PAIR_LAYOUTS)
    raise DataError(f"no pair layout under {root}: expected {layouts}")


class PairDataset(_MatchedFolders):
    """Blurry/sharp pairs without maps (stage-3 fine-tuning), e.g. DPDD's ``train_c``.

    Layouts, tried in order: ``blurry/`` + ``sharp/``, ``source/`` + ``target/``
    (DPDD), ``inputC/`` + ``target/``. Items have ``has_map`` False and a zero map.

    Args:
        root: folder holding the two sub-folders.
        crop, seed, length, augment: as ``DEDDataset``.

    Raises:
        DataError: no known layout, empty folders, no common stems, or none readable.
    """

    def __init__(
        self,
        root: Path,
        crop: Optional[int] = 256,
        seed: int = 0,
        length: Optional[int] = None,
        augment: bool = True,
    ):
        if not Path(root).is_dir():
            raise DataError(f"dataset folder not found: {root}")
        super().__init__(root, find_pair_layout(root), crop, seed, length, augment)
