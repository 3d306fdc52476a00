"""Training batches: a deterministic loader, or a pre-rendered pool on the device."""

import itertools
import queue
import threading
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from training.config import TrainConfig
from training.data import (
    DEDDataset,
    ImageFolderSource,
    PairDataset,
    SkimagePhotos,
    SyntheticDefocusDataset,
    corpus,
    worker_init_fn,
)

#: Positions only grow; rendered items are a function of (seed, position).
_ENDLESS = 2**62


class PositionSampler(Sampler):
    """Dataset positions of steps ``start``, ``start + 1``, ...: this rank's share of each.

    Position ``step * batch + rank * (batch / world) + j``: the data of a step does
    not depend on where a run was interrupted, which makes resuming exact.
    """

    def __init__(self, start: int, batch: int, rank: int = 0, world: int = 1):
        self.start, self.batch, self.rank, self.local = start, batch, rank, batch // world

    def __iter__(self):
        for step in itertools.count(self.start):
            base = step * self.batch + self.rank * self.local
            yield from range(base, base + self.local)


class Cycled(Dataset):
    """Position p of a finite dataset: a fresh seeded permutation every epoch."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return _ENDLESS

    @lru_cache(maxsize=2)
    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))

    def __getitem__(self, position: int):
        epoch, k = divmod(position, len(self.dataset))
        return self.dataset[int(self._order(epoch)[k])]


def build_dataset(config: TrainConfig, crop: int) -> Dataset:
    """The training set the config names: rendered, DED triplets or blurry/sharp pairs."""
    dc, seed = config.data, config.train.seed
    if dc.ded:
        return Cycled(DEDDataset(dc.ded, crop=crop, seed=seed), seed)
    if dc.pairs:
        return Cycled(PairDataset(dc.pairs, crop=crop, seed=seed), seed)
    return SyntheticDefocusDataset(
        photo_sources(dc.source),
        crop=crop,
        seed=seed,
        length=_ENDLESS,
        max_radius_px=dc.max_radius_px,
        in_focus_fraction=dc.in_focus_fraction,
        uniform_fraction=dc.uniform_fraction,
    )


def photo_sources(source: str) -> list:
    """``[data] source``: ``"builtin"`` (scikit-image's training photos), ``"corpus"``
    (those plus the train split of ``make data``'s corpus) or a folder of images."""
    if source == "builtin":
        return [SkimagePhotos("train")]
    if source == "corpus":
        return [SkimagePhotos("train"), ImageFolderSource(corpus.split_folder("train"))]
    return [ImageFolderSource(source)]


def to_device(batch: dict, device: torch.device, channels_last: bool) -> dict:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = {}
    for key, value in batch.items():
        value = value.to(device, non_blocking=True)
        out[key] = value.to(memory_format=fmt) if value.dim() == 4 else value
    return out


class LoaderBatches:
    """Batches straight from DataLoader workers, in the order of ``PositionSampler``."""

    def __init__(self, config: TrainConfig, start: int, rank: int, world: int, device: torch.device):
        tc, dc = config.train, config.data
        self.loader = DataLoader(
            build_dataset(config, dc.crop),
            batch_size=config.rendered_batch // world,
            sampler=PositionSampler(start, config.rendered_batch, rank, world),
            num_workers=dc.workers,
            pin_memory=device.type == "cuda",
            persistent_workers=dc.workers > 0,
            worker_init_fn=worker_init_fn,
            prefetch_factor=4 if dc.workers > 0 else None,
        )
        self.it = iter(self.loader)
        self.device, self.channels_last = device, tc.channels_last

    def __next__(self) -> dict:
        return to_device(next(self.it), self.device, self.channels_last)

    def close(self) -> None:
        del self.it


def _packed_collate(items: list) -> dict:
    """Collate in the worker and shrink for the pool: images to uint8 (the blurry
    image is 8-bit quantised already), the map to float16. Keeps this work, and
    three quarters of the bytes, off the training process."""
    batch = default_collate(items)
    as_u8 = lambda x: (x * 255).round_().clamp_(0, 255).to(torch.uint8)  # noqa: E731
    return {
        "blurry": as_u8(batch["blurry"]),
        "sharp": as_u8(batch["sharp"]),
        "defocus_map": batch["defocus_map"].half(),
        "has_map": batch["has_map"],
    }


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def dihedral_crops(
    images: torch.Tensor,
    idx: torch.Tensor,
    ys: torch.Tensor,
    xs: torch.Tensor,
    flips: torch.Tensor,
    size: int,
) -> torch.Tensor:
    """Per-sample random crops in one gather: crop b is ``images[idx[b], :, ys[b]:, xs[b]:]``
    (``size`` square), mirrored and transposed by the three bits of ``flips[b]`` (one
    of the 8 symmetries of the square: bit 0 flips x, bit 1 flips y, bit 2 transposes).

    Shape:
        images (N, C, H, W); idx, ys, xs, flips (B,) integer -> (B, C, size, size),
        channels_last in memory.
    """
    span = torch.arange(size, device=images.device)
    flip = lambda bit: (flips[:, None] >> bit) & 1 == 1  # noqa: E731
    rows = ys[:, None] + torch.where(flip(1), size - 1 - span, span)
    cols = xs[:, None] + torch.where(flip(0), size - 1 - span, span)
    swap = flip(2)[:, :, None]
    r = torch.where(swap, rows[:, None, :], rows[:, :, None])
    c = torch.where(swap, cols[:, :, None], cols[:, None, :])
    # Index tensors around a slice put their broadcast shape first: (B, size, size, C).
    return images[idx[:, None, None], :, r, c].permute(0, 3, 1, 2)


class PoolBatches:
    """Crops cut on the device from a pool of pre-rendered samples.

    Workers render ``pool_crop``-sized samples in the background; each step swaps
    whatever finished into random pool slots and cuts the batch from the pool
    (per-sample random crop, flips and transposition, in one gather). Rendering
    stays off the training loop, so a fast GPU is never starved by the CPU. The
    order depends on thread timing, so runs in this mode are not bit-reproducible.
    """

    def __init__(self, config: TrainConfig, device: torch.device):
        dc, tc = config.data, config.train
        self.crop, self.batch, self.device = dc.crop, config.rendered_batch, device
        self.channels_last = tc.channels_last
        self.gen = torch.Generator(device="cpu").manual_seed(tc.seed)
        loader = DataLoader(
            build_dataset(config, dc.pool_crop),
            batch_size=16,
            sampler=PositionSampler(0, 16),
            num_workers=dc.workers,
            persistent_workers=dc.workers > 0,
            worker_init_fn=worker_init_fn,
            collate_fn=_packed_collate,
            pin_memory=device.type == "cuda",
        )
        self.queue: "queue.Queue[dict]" = queue.Queue(maxsize=8)
        self.stop = threading.Event()
        # Workers fork here, in the main thread, not inside the filling thread.
        self.thread = threading.Thread(target=self._fill, args=(iter(loader),), daemon=True)
        self.thread.start()
        self.pool = self._initial(dc.pool_size)

    def _fill(self, batches) -> None:
        for batch in batches:
            while not self.stop.is_set():
                try:
                    self.queue.put(batch, timeout=0.5)
                    break
                except queue.Full:
                    continue
            if self.stop.is_set():
                return

    def _initial(self, size: int) -> dict:
        parts, count = [], 0
        from tqdm import tqdm

        with tqdm(total=size, desc="render pool", leave=False) as bar:
            while count < size:
                parts.append(_to(self.queue.get(), self.device))
                count += len(parts[-1]["has_map"])
                bar.update(len(parts[-1]["has_map"]))
        return {k: torch.cat([p[k] for p in parts])[:size] for k in parts[0]}

    def _refresh(self) -> None:
        for _ in range(2):
            try:
                fresh = _to(self.queue.get_nowait(), self.device)
            except queue.Empty:
                return
            slots = torch.randint(len(self.pool["has_map"]), (len(fresh["has_map"]),), generator=self.gen).to(
                self.device
            )
            for key in self.pool:
                self.pool[key][slots] = fresh[key]

    def __next__(self) -> dict:
        self._refresh()
        n, full = len(self.pool["has_map"]), self.pool["blurry"].shape[-1]
        draw = lambda high: torch.randint(high, (self.batch,), generator=self.gen)  # noqa: E731
        idx, ys, xs, flips = draw(n), draw(full - self.crop + 1), draw(full - self.crop + 1), draw(8)
        idx, ys, xs, flips = (t.to(self.device, non_blocking=True) for t in (idx, ys, xs, flips))
        batch = {
            key: dihedral_crops(self.pool[key], idx, ys, xs, flips, self.crop).float()
            for key in ("blurry", "sharp", "defocus_map")
        }
        batch["blurry"] /= 255
        batch["sharp"] /= 255
        batch["has_map"] = self.pool["has_map"][idx]
        return to_device(batch, self.device, self.channels_last)

    def close(self) -> None:
        """Stop the filling thread and wait for it: a daemon thread still inside torch or
        OpenCV when the interpreter exits can abort the process."""
        self.stop.set()
        self.thread.join(timeout=60)


def make_batches(config: TrainConfig, start: int, rank: int, world: int, device: torch.device):
    """Pool mode where ``pool_size`` > 0 (single process), else the loader."""
    if config.data.pool_size > 0 and world == 1:
        return PoolBatches(config, device)
    return LoaderBatches(config, start, rank, world, device)
