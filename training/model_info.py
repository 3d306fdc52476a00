"""Parameter count, MACs per pixel and receptive field of each preset, or of a checkpoint.

python -m training.model_info [--variant sft_dec] [--checkpoint models/default]

A checkpoint may have grown past its preset (``training.checkpoint.init_from``):
``--checkpoint`` reports the network it holds.
"""

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from training.archs import DefocusDeblurNet
from training.checkpoint import CheckpointError, load_checkpoint
from training.presets import PRESETS, NetConfig, get_config


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_per_pixel(model: DefocusDeblurNet, size: int = 64) -> float:
    """Multiply-accumulates of the convolutions of one forward pass, per input pixel."""
    total = 0

    def hook(conv: nn.Conv2d, _inputs, output):
        nonlocal total
        k = conv.kernel_size[0] * conv.kernel_size[1]
        total += output.numel() * (conv.in_channels // conv.groups) * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(torch.rand(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return total / (size * size)


def _gradient_extent(fn, inputs, size: int, scale: int) -> int:
    """Width of the input region that the central ``scale`` x ``scale`` output cell sees."""
    for x in inputs:
        x.requires_grad_(True)
    out = fn(*inputs)
    c = (size // 2) // scale * scale
    out[..., c : c + scale, c : c + scale].sum().backward()
    seen = sum(x.grad.abs().sum(dim=(0, 1)) for x in inputs) > 0
    cols = torch.nonzero(seen.any(dim=0)).flatten()
    return int(cols.max() - cols.min() + 1)


def receptive_fields(model: DefocusDeblurNet, size: int = 160) -> dict:
    """Receptive fields in pixels, found by back-propagating from one output cell.

    ``estimate``: image -> map. ``restore``: (image, map) -> output with fixed pooled
    statistics. ``total``: image -> output through the estimated map. The runtime
    overlaps tiles by at least half of the graph's field on each side. A field that
    fills the ``size`` x ``size`` probe is measured again on one twice as large.
    The model is probed in training mode, where the map's clamp passes gradients
    straight through: the clamp bounds values, it does not shrink what a cell sees
    (the nets have no layer that behaves otherwise in training mode). A focus gate is
    lifted for the probe: it scales a pixel's residual by a weight that is 0 in focus,
    which would hide what the pixel sees wherever the gate opens.
    """
    if model.config.gate_high:
        ungated = DefocusDeblurNet(dataclasses.replace(model.config, gate_low=0.0, gate_high=0.0))
        ungated.load_state_dict(model.state_dict())
        return receptive_fields(ungated, size)
    was_training = model.training
    try:
        return _fields(model.train(), size)
    finally:
        model.train(was_training)


def _fields(model: DefocusDeblurNet, size: int) -> dict:
    scale = model.config.scale
    image = torch.rand(1, 3, size, size)
    dmap = torch.rand(1, 1, size, size)
    cond_mean = None
    if model.uses_pooling:
        cond_mean = model.condition_mean(dmap).detach()
    fields = {
        "estimate": _gradient_extent(model.estimate, [image.clone()], size, scale),
        "restore": _gradient_extent(
            lambda i, m: model.restore(i, m, cond_mean), [image.clone(), dmap.clone()], size, scale
        ),
        "total": _gradient_extent(
            lambda i: model.restore(i, model.estimate(i), cond_mean), [image.clone()], size, scale
        ),
    }
    if max(fields.values()) >= size - scale:
        return _fields(model, 2 * size)
    return fields


def model_stats(config: NetConfig) -> dict:
    torch.manual_seed(0)
    model = DefocusDeblurNet(config).eval()
    return {
        "preset": config.preset,
        "variant": config.variant,
        "params": count_params(model),
        "macs_per_pixel": macs_per_pixel(model),
        "receptive_field": receptive_fields(model),
        "size_multiple": config.size_multiple,
    }


def _configs(args: argparse.Namespace) -> List[Tuple[str, NetConfig]]:
    """(row name, config): the checkpoint's own network, else every preset's."""
    if args.checkpoint is None:
        return [(name, get_config(name, args.variant)) for name in PRESETS]
    model, _ = load_checkpoint(args.checkpoint)
    return [(str(args.checkpoint), model.config)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.model_info", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--variant", default="sft_dec", help="variant of the presets (default sft_dec)")
    parser.add_argument("--checkpoint", type=Path, help="report this checkpoint or bundle folder's network")
    args = parser.parse_args(argv)
    try:
        configs = _configs(args)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    width = max(len(name) for name, _ in configs + [("preset", None)])
    print(
        f"{'preset':{width}} {'variant':9} {'params':>10} {'KMAC/px':>9} "
        f"{'RF est/rest/total (px)':>24} {'multiple':>8}"
    )
    for name, config in configs:
        s = model_stats(config)
        rf = s["receptive_field"]
        print(
            f"{name:{width}} {s['variant']:9} {s['params']:>10,} {s['macs_per_pixel'] / 1e3:>9.1f} "
            f"{rf['estimate']:>8}/{rf['restore']}/{rf['total']:<8} {s['size_multiple']:>8}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
