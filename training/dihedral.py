"""The 8 symmetries of the square, as codes 0-7, and batches paired with turned copies.

A code's bit 0 flips x, bit 1 flips y, bit 2 then transposes: the convention of
``training.batches.dihedral_crops``. Defocus blur has these symmetries (a disc PSF
turned is the same disc), so the map of a turned image is the turned map.
"""

import torch
from torch import Tensor

#: Codes of the 7 symmetries other than the identity.
TURNS = tuple(range(1, 8))


def turn(x: Tensor, code: int) -> Tensor:
    """``x`` (..., H, W) mirrored and transposed as ``code`` says (H = W where it transposes)."""
    if code & 1:
        x = x.flip(-1)
    if code & 2:
        x = x.flip(-2)
    if code & 4:
        x = x.transpose(-1, -2)
    return x


def turn_back(x: Tensor, code: int) -> Tensor:
    """The inverse of ``turn(., code)``."""
    if code & 4:
        x = x.transpose(-1, -2)
    if code & 2:
        x = x.flip(-2)
    if code & 1:
        x = x.flip(-1)
    return x


def turn_of_step(step: int) -> int:
    """The symmetry a training step pairs its crops with: all 7 in turn."""
    return TURNS[step % len(TURNS)]


def with_turned_copies(batch: dict, code: int) -> dict:
    """``batch`` (N crops) followed by the same crops turned by ``code``: 2N crops, and
    ``batch["turn"] = code`` so the loss can compare each map with its copy's.

    Shape:
        image entries (N, C, S, S) -> (2N, C, S, S), same memory format; ``has_map`` (N,) -> (2N,).
    """
    paired = {}
    for key, value in batch.items():
        if value.dim() == 4:
            channels_last = value.is_contiguous(memory_format=torch.channels_last)
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            paired[key] = torch.cat([value, turn(value, code)]).contiguous(memory_format=fmt)
        else:
            paired[key] = torch.cat([value, value])
    paired["turn"] = code
    return paired
