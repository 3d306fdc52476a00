"""Tiny model bundles for the runtime tests (this file holds fixtures, no tests).

The bundles come from ``export.graphs`` on a tiny ``DefocusDeblurNet`` whose
convolutions are re-initialised at full Kaiming scale, so that its output depends
strongly on context and pooled statistics: a tiling mistake shows as a large error.
"""
import dataclasses
import json
from pathlib import Path
from typing import Dict, Tuple

import pytest

TINY = dict(channels=8, num_blocks=1, dme_channels=8, dme_blocks=1, dme_dilated_blocks=1,
            cond_channels=8)
_CACHE: Dict[Tuple[Path, str], Tuple[Path, object]] = {}


def _tensor(name: str, shape: list) -> dict:
    return {"name": name, "dtype": "float32", "shape": shape}


_SHAPES = {
    "image": ["batch", 3, "height", "width"],
    "defocus_map": ["batch", 1, "height", "width"],
    "deblurred": ["batch", 3, "height", "width"],
}


def build_bundle(root: Path, variant: str = "sft_dec"):
    """Export a tiny model of ``variant`` into ``root`` and write its manifest.

    Returns:
        (bundle folder, the torch model in eval mode).
    """
    import torch
    from torch import nn

    from export.graphs import export_graph, graph_specs
    from common.hashing import sha256_file
    from runtime.bundle import FORMAT
    from training.archs import DefocusDeblurNet
    from training.model_info import receptive_fields
    from training.presets import MAP_RADIUS_SCALE_PX, MAP_UNITS, get_config

    key = (root, variant)
    if key in _CACHE:
        return _CACHE[key]
    torch.manual_seed(0)
    config = dataclasses.replace(get_config("small", variant), **TINY)
    model = DefocusDeblurNet(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="linear")
                nn.init.uniform_(module.bias, -0.1, 0.1)
        for name, module in model.named_modules():
            if name.endswith("gamma_c"):  # make the pooled statistics matter
                module[-1].weight.mul_(10.0)
    folder = root / variant
    folder.mkdir(parents=True, exist_ok=True)
    graphs = {}
    for name, spec in graph_specs(model).items():
        path = folder / f"{name}.onnx"
        import onnx
        onnx.save(export_graph(spec, path), str(path))
        shapes = dict(_SHAPES, cond_mean=["batch", config.cond_channels])
        graphs[name] = {
            "inputs": [_tensor(n, shapes[n]) for n in spec["inputs"]],
            "outputs": [_tensor(n, shapes[n]) for n in spec["outputs"]],
            "files": {"fp32": path.name},
            "sha256": {"fp32": sha256_file(path)},
        }
    manifest = {
        "format": FORMAT, "preset": "small", "variant": variant, "map_units": MAP_UNITS,
        "map_radius_scale_px": MAP_RADIUS_SCALE_PX, "size_multiple": config.size_multiple,
        "receptive_field": receptive_fields(model), "cond_channels": config.cond_channels,
        "graphs": graphs, "engines": {},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    _CACHE[key] = (folder, model)
    return folder, model


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """(bundle folder, torch model) of the pooling variant ``sft_dec``."""
    return build_bundle(tmp_path_factory.getbasetemp() / "runtime_bundles", "sft_dec")


@pytest.fixture(scope="session")
def concat_bundle(tmp_path_factory):
    """(bundle folder, torch model) of the non-pooling variant ``concat``."""
    return build_bundle(tmp_path_factory.getbasetemp() / "runtime_bundles", "concat")
