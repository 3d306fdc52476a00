"""Training batches: the pool's per-sample crops against a numpy reference, and the pool itself."""

import numpy as np
import pytest
import torch

from training.batches import PoolBatches, dihedral_crops
from training.config import from_dict


def reference_crop(images: np.ndarray, i: int, y: int, x: int, bits: int, size: int) -> np.ndarray:
    """Crop, then flip x (bit 0), flip y (bit 1), then transpose (bit 2)."""
    crop = images[i, :, y : y + size, x : x + size]
    if bits & 1:
        crop = crop[:, :, ::-1]
    if bits & 2:
        crop = crop[:, ::-1, :]
    if bits & 4:
        crop = crop.transpose(0, 2, 1)
    return crop


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16, torch.float32])
@pytest.mark.parametrize("channels,full,size", [(3, 12, 5), (1, 9, 9), (3, 20, 16)])
def test_dihedral_crops_match_reference(dtype, channels, full, size):
    gen = torch.Generator().manual_seed(channels * full + size)
    images = (torch.rand(4, channels, full, full, generator=gen) * 255).to(dtype)
    batch = 16  # more than 8 so that every symmetry appears with random positions
    idx = torch.randint(4, (batch,), generator=gen)
    ys, xs = (torch.randint(full - size + 1, (batch,), generator=gen) for _ in range(2))
    flips = torch.arange(batch) % 8
    crops = dihedral_crops(images, idx, ys, xs, flips, size)
    assert crops.shape == (batch, channels, size, size) and crops.dtype == dtype
    assert crops.is_contiguous(memory_format=torch.channels_last)
    for b in range(batch):
        expected = reference_crop(images.numpy(), int(idx[b]), int(ys[b]), int(xs[b]), int(flips[b]), size)
        np.testing.assert_array_equal(crops[b].numpy(), expected, err_msg=f"crop {b}")


def test_dihedral_crops_are_eight_distinct_symmetries():
    image = torch.arange(16.0).view(1, 1, 4, 4)
    zeros = torch.zeros(8, dtype=torch.long)
    crops = dihedral_crops(image, zeros, zeros, zeros, torch.arange(8), 4)
    assert len({tuple(c.flatten().tolist()) for c in crops}) == 8
    assert torch.equal(crops[0, 0], image[0, 0])
    assert torch.equal(crops[4, 0], image[0, 0].T)


def test_pool_batches_on_cpu():
    config = from_dict(
        {
            "data": {"crop": 32, "pool_size": 6, "pool_crop": 40, "workers": 0},
            "train": {"batch": 5, "seed": 1},
            "stage": [{"kind": "gt_map", "steps": 1}],
        }
    )
    batches = PoolBatches(config, torch.device("cpu"))
    try:
        for _ in range(3):
            batch = next(batches)
            for key, channels in (("blurry", 3), ("sharp", 3), ("defocus_map", 1)):
                value = batch[key]
                assert value.shape == (5, channels, 32, 32) and value.dtype == torch.float32
                assert 0 <= float(value.min()) and float(value.max()) <= (1 if channels == 3 else 2)
            assert batch["has_map"].dtype == torch.bool and bool(batch["has_map"].all())
            # Rendered defocus blurs: the blurry crop differs from the sharp one.
            assert float((batch["blurry"] - batch["sharp"]).abs().mean()) > 0
    finally:
        batches.close()
    assert not batches.thread.is_alive()
