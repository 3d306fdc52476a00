"""The paper's losses (Sec. 3.4) and the loss of each training stage."""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from training.dihedral import turn_back

#: Loss weights lambda_1 (map), lambda_2 (image L1) and lambda_3 (weighted L2).
LAMBDA_DME, LAMBDA_DF, LAMBDA_WD = 0.2, 0.9, 0.1

STAGES = ("gt_map", "joint", "finetune", "end_to_end", "dme")


def weighted_l2(output: Tensor, target: Tensor, defocus_map: Tensor, has_map: Tensor) -> Tensor:
    """L_wd = || W * (I_df - I_gt) ||_2 with W = DM_gt / mean(DM_gt) (paper Eq. 5-6).

    Normalisation: the norm is taken per pixel over the colour channels (DID-ANet's
    convention) and averaged over pixels, and W is normalised per image so its
    mean is 1. L_wd thus has the scale of a per-pixel error, like L_df, and
    blurrier pixels weigh more. An image with no map, or an all-in-focus map
    (mean 0), gets W = 1.

    Shape:
        output, target (N, 3, H, W); defocus_map (N, 1, H, W); has_map (N,) bool.
    """
    mean = defocus_map.abs().mean(dim=(1, 2, 3), keepdim=True)
    usable = has_map.view(-1, 1, 1, 1) & (mean > 1e-6)
    weight = torch.where(usable, defocus_map.abs() / mean.clamp_min(1e-6), torch.ones_like(defocus_map))
    per_pixel = torch.sqrt(((output - target) ** 2).sum(dim=1, keepdim=True) + 1e-12)
    return (weight * per_pixel).mean()


def dme_loss(
    estimated: Tensor, gt_map: Tensor, has_map: Tensor, radius_weight: float = 0.0, quantile: float = 0.5
) -> Tensor:
    """L_dme: mean map error over the samples that have a map.

    The error of a pixel is the pinball loss 2 max(q e, (q - 1) e) of e = truth - estimate
    with ``quantile`` = q: at q = 0.5 it is |e| (the paper's L1); at q > 0.5 reading
    too low costs q / (1 - q) times reading too high, so the optimum moves from the
    median of the possible truths to their q-quantile. On unseen photos nearly all of
    the map's PSNR cost comes from under-reading (``models/default/README.md``).

    With ``radius_weight`` = a > 0 each pixel's error weighs 1 + a x its true map and the
    mean is taken over those weights: large blur, a small share of the pixels, counts
    more (an unweighted estimator reads 9-10 px as 5-6 px, ``radius_weight`` in
    ``training.config``).
    """
    weight = has_map.view(-1, 1, 1, 1).to(estimated.dtype) * (1 + radius_weight * gt_map)
    error = gt_map - estimated
    pinball = 2 * torch.maximum(quantile * error, (quantile - 1) * error)
    return (weight * pinball).sum() / weight.sum().clamp_min(1)


def turn_consistency(estimated: Tensor, code: int) -> Tensor:
    """L_turn: mean absolute difference between the maps of a batch's first half and of
    its second half turned back (``training.dihedral.with_turned_copies`` with ``code``).
    No ground truth needed: a defocus map turns with its image."""
    half = len(estimated) // 2
    return (estimated[:half] - turn_back(estimated[half:], code)).abs().mean()


def map_term(
    estimated: Tensor, batch: dict, turn_weight: float, radius_weight: float = 0.0, quantile: float = 0.5
) -> Tuple[Tensor, dict]:
    """The map's share of a stage loss, L_dme (``dme_loss`` with ``radius_weight`` and
    ``quantile``) plus ``turn_weight`` x L_turn where the batch holds turned copies, and
    its terms (detached)."""
    l_dme = dme_loss(estimated, batch["defocus_map"], batch["has_map"], radius_weight, quantile)
    if turn_weight <= 0 or "turn" not in batch:
        return l_dme, {"l_dme": l_dme.detach()}
    l_turn = turn_consistency(estimated, batch["turn"])
    return l_dme + turn_weight * l_turn, {"l_dme": l_dme.detach(), "l_turn": l_turn.detach()}


def stage_loss(
    stage: str,
    deblurred: Optional[Tensor],
    estimated: Tensor,
    batch: dict,
    turn_weight: float = 0.0,
    radius_weight: float = 0.0,
    quantile: float = 0.5,
) -> dict:
    """Loss of one stage; returns a dict with ``total`` and its terms (detached).

    ``gt_map``, ``joint`` and ``end_to_end`` use Loss1 = 0.2 L_dme + 0.9 L_df
    (L_dme only on samples with a map); ``finetune`` uses Loss2 = 0.9 L_df + 0.1 L_wd;
    ``dme`` trains the map estimator alone on L_dme (``deblurred`` is None there).
    With ``turn_weight`` > 0 and a batch of turned copies, L_dme becomes
    L_dme + turn_weight * L_turn wherever it is used; ``radius_weight`` weighs L_dme's
    pixels by their true blur and ``quantile`` tilts it against under-reading (``dme_loss``).
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES}")
    sharp, gt_map, has_map = batch["sharp"], batch["defocus_map"], batch["has_map"]
    if stage == "finetune":
        l_df = F.l1_loss(deblurred, sharp)
        l_wd = weighted_l2(deblurred, sharp, gt_map, has_map)
        total = LAMBDA_DF * l_df + LAMBDA_WD * l_wd
        return {"total": total, "l_df": l_df.detach(), "l_wd": l_wd.detach()}
    map_loss, terms = map_term(estimated, batch, turn_weight, radius_weight, quantile)
    if stage == "dme":
        return {"total": map_loss, **terms}
    l_df = F.l1_loss(deblurred, sharp)
    return {"total": LAMBDA_DME * map_loss + LAMBDA_DF * l_df, "l_df": l_df.detach(), **terms}
