"""The shipped default model: it loads, its ONNX matches PyTorch, it deblurs held-out
renders, and tiling it is exact (tiled == whole-image, >= 50 dB)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from runtime import Deblurrer, load_bundle
from training.checkpoint import load_checkpoint
from training.data import build_validation_set
from training.metrics import psnr

BUNDLE = Path(__file__).resolve().parents[1] / "models" / "default"


@pytest.fixture(scope="module")
def checkpoint():
    return load_checkpoint(BUNDLE, preset="small")


@pytest.fixture(scope="module")
def scenes():
    return build_validation_set(seed=0, size=128, levels=(5.0,), dead_leaves_images=0)


def _hwc(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.permute(1, 2, 0).numpy())


def test_bundle_is_the_checkpoint(checkpoint):
    model, config = checkpoint
    bundle = load_bundle(BUNDLE)
    assert config["net"]["preset"] == bundle.manifest["preset"] == "small"
    assert bundle.manifest["variant"] == config["net"]["variant"] == "sft_dec"
    assert bundle.uses_pooling and bundle.size_multiple == 2
    assert bundle.manifest["focus_gate"] == [config["net"]["gate_low"], config["net"]["gate_high"]]


def test_onnx_matches_pytorch_and_beats_the_blurry_input(checkpoint, scenes):
    model, _ = checkpoint
    deblurrer = Deblurrer(BUNDLE, backend="onnxruntime", device="cpu", threads=1)
    for scene in scenes:
        with torch.no_grad():
            reference, _ = model(scene["blurry"][None])
        out, dmap = deblurrer.run(_hwc(scene["blurry"]))
        assert psnr(out, _hwc(reference[0].clamp(0, 1))) > 60
        sharp, blurry = _hwc(scene["sharp"]), _hwc(scene["blurry"])
        assert psnr(out, sharp) > psnr(blurry, sharp) + 0.3, scene["name"]
        assert dmap.shape == blurry.shape[:2]


@pytest.mark.parametrize("tile", [128, 176, 224])  # estimate tiles (2x) above its 192 px overlap
def test_tiled_matches_whole_image(tile):
    rng = np.random.default_rng(0)
    scene = build_validation_set(seed=1, size=256, levels=(8.0,), dead_leaves_images=1)[0]
    image = _hwc(scene["blurry"])
    image = np.concatenate([image, image[:, ::-1][:, :150]], axis=1)  # 256 x 406
    image = np.concatenate([image, image[::-1]], axis=0)  # 512 x 406
    image = np.clip(image + rng.normal(0, 0.01, image.shape).astype(np.float32), 0, 1)
    whole, whole_map = Deblurrer(BUNDLE, backend="onnxruntime", tile=512, threads=1).run(image)
    tiled = Deblurrer(BUNDLE, backend="onnxruntime", tile=tile, threads=1)
    assert tiled.count_tiles(*image.shape[:2]) >= 4
    assert len(tiled.pipeline.grid("estimate", *image.shape[:2]).tiles()) >= 2
    out, dmap = tiled.run(image)
    assert psnr(out, whole) >= 50
    assert np.abs(dmap - whole_map).max() < 1e-3


def test_readme_export_table_is_what_the_manifest_says():
    manifest = load_bundle(BUNDLE).manifest
    readme = (BUNDLE.parents[1] / "README.md").read_text()
    for graph in ("estimate", "condition", "restore"):
        parity = manifest["parity"][graph]["psnr_db"]
        fp16 = manifest["fp16"][graph]
        peak = max(fp16["max_activation"].values())
        row = f"| {graph} | {parity:.1f} dB | {fp16['psnr_db_vs_fp32']:.1f} dB | {peak:.4g} |"
        assert row in readme, f"README.md's export table lacks {row!r}: copy it from the manifest"
