"""OpenVINO backend: precision choice, parity with PyTorch and ONNX Runtime, exact tiling
in FP32 and BF16 (where the CPU has it), the ``auto`` choice, and a missing OpenVINO or a
bad bundle."""

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from runtime import Deblurrer, load_bundle
from runtime import openvino_backend as ov_backend
from runtime.backend import create_backend
from runtime.errors import BackendError, BundleError
from training.metrics import psnr

BUNDLE = Path(__file__).resolve().parents[1] / "models" / "default"
HAS_BF16 = ov_backend.best_precision(ov_backend.cpu_capabilities(ov_backend.ov.Core())) == "bf16"
PRECISIONS = [
    "fp32",
    pytest.param(
        "bf16",
        marks=pytest.mark.skipif(
            not HAS_BF16, reason="this CPU has no native BF16 (OpenVINO's OPTIMIZATION_CAPABILITIES)"
        ),
    ),
]


@pytest.mark.parametrize(
    "capabilities,expected,hint",
    [
        (["FP32", "BF16", "INT8", "BIN"], "bf16", "bf16"),
        (["FP32", "INT8", "BIN", "EXPORT_IMPORT"], "fp32", "f32"),
    ],
)
def test_precision_follows_the_cpu(tiny_bundle, monkeypatch, capabilities, expected, hint):
    monkeypatch.setattr(ov_backend, "cpu_capabilities", lambda core: capabilities)
    backend = ov_backend.OpenVinoBackend(load_bundle(tiny_bundle[0]), threads=1)
    assert backend.precision == expected
    assert backend.config["INFERENCE_PRECISION_HINT"] == hint
    assert backend.config["INFERENCE_NUM_THREADS"] == 1
    forced = ov_backend.OpenVinoBackend(load_bundle(tiny_bundle[0]), "fp32", threads=1)
    assert forced.config["INFERENCE_PRECISION_HINT"] == "f32"


def test_bf16_without_it_and_fp16_are_refused(tiny_bundle, monkeypatch):
    monkeypatch.setattr(ov_backend, "cpu_capabilities", lambda core: ["FP32", "INT8"])
    bundle = load_bundle(tiny_bundle[0])
    with pytest.raises(BackendError, match="no native BF16 .*FP32, INT8.*--precision fp32"):
        ov_backend.OpenVinoBackend(bundle, "bf16")
    with pytest.raises(BackendError, match="fp32 or bf16 on the CPU, not 'fp16'"):
        ov_backend.OpenVinoBackend(bundle, "fp16")


def test_one_compile_per_tile_graph_and_shape(tiny_bundle):
    backend = ov_backend.OpenVinoBackend(load_bundle(tiny_bundle[0]), "fp32", threads=1)
    image, dmap = np.zeros((2, 3, 18, 22), np.float32), np.zeros((2, 1, 18, 22), np.float32)
    for _ in range(2):
        backend.run("estimate", {"image": image})
        for chunk in (dmap, dmap[:, :, :10]):
            cond = backend.run("condition", {"defocus_map": chunk})["cond_mean"]
        backend.run("restore", {"image": image, "defocus_map": dmap, "cond_mean": cond})
    # The condition graph is compiled once, with dynamic shapes.
    assert [len(backend._requests[g]) for g in ("estimate", "condition", "restore")] == [1, 1, 1]
    assert list(backend._requests["restore"]) == [
        (("image", (2, 3, 18, 22)), ("defocus_map", (2, 1, 18, 22)), ("cond_mean", (2, 8)))
    ]


def test_compiled_shapes_are_bounded(tiny_bundle):
    backend = ov_backend.OpenVinoBackend(load_bundle(tiny_bundle[0]), "fp32", threads=1)
    for width in (16, 18, 20, 16):
        backend.run("estimate", {"image": np.zeros((1, 3, 16, width), np.float32)})
    shapes = [dict(key)["image"][3] for key in backend._requests["estimate"]]
    assert shapes == [20, 16]  # least recently used dropped, SHAPES_PER_GRAPH == 2


@pytest.mark.parametrize("precision", PRECISIONS)
def test_default_model_is_exact_and_faithful(precision):
    from training.checkpoint import load_checkpoint

    rng = np.random.default_rng(0)
    image = rng.random((200, 330, 3), dtype=np.float32)
    image = np.clip(image * 0.2 + np.linspace(0, 0.8, 330, dtype=np.float32)[None, :, None], 0, 1)
    model, _ = load_checkpoint(BUNDLE, preset="small")
    with torch.no_grad():
        ref, _ = model(torch.from_numpy(image.transpose(2, 0, 1).copy())[None])
    ref = np.clip(ref[0].numpy().transpose(1, 2, 0), 0, 1)
    whole, whole_map = Deblurrer(BUNDLE, backend="openvino", precision=precision, tile=512, threads=1).run(
        image
    )
    tiled = Deblurrer(BUNDLE, backend="openvino", precision=precision, tile=128, threads=1)
    assert tiled.describe().endswith(precision)
    assert tiled.count_tiles(*image.shape[:2]) >= 4
    out, dmap = tiled.run(image)
    assert psnr(out, whole) >= 50
    assert psnr(whole, ref) >= 50
    assert np.abs(dmap - whole_map).max() < (1e-3 if precision == "fp32" else 3e-2)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_self_ensemble_and_given_map_match_onnxruntime(tiny_bundle, precision):
    image = np.random.default_rng(3).random((37, 51, 3), dtype=np.float32)
    given = np.random.default_rng(4).random((37, 51), dtype=np.float32)
    tol = 1e-5 if precision == "fp32" else 3e-2
    for kwargs in ({"self_ensemble": 4}, {}):
        ov = Deblurrer(tiny_bundle[0], backend="openvino", precision=precision, threads=1, **kwargs)
        ort = Deblurrer(tiny_bundle[0], backend="onnxruntime", threads=1, **kwargs)
        for args in ((), (1.5, given)):
            out, dmap = ov.run(image, *args)
            ref, ref_map = ort.run(image, *args)
            np.testing.assert_allclose(out, ref, atol=tol)
            np.testing.assert_allclose(dmap, ref_map, atol=tol)


def test_auto_picks_openvino_on_the_cpu(tiny_bundle, caplog):
    with caplog.at_level(logging.INFO, logger="runtime"):
        chosen = create_backend(load_bundle(tiny_bundle[0]), "auto", "cpu", threads=1)
    assert chosen.name == "openvino"
    assert "backend auto: openvino (installed" in caplog.text
    with caplog.at_level(logging.INFO, logger="runtime"), pytest.raises(BundleError, match="no fp16 ONNX"):
        create_backend(load_bundle(tiny_bundle[0]), "auto", "cpu", "fp16", threads=1)
    assert "backend auto: onnxruntime (fp16 runs the FP16 graph on ONNX Runtime)" in caplog.text


def test_missing_openvino_falls_back_clearly(tiny_bundle, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    monkeypatch.delitem(sys.modules, "runtime.openvino_backend")
    bundle = load_bundle(tiny_bundle[0])
    with caplog.at_level(logging.INFO, logger="runtime"):
        chosen = create_backend(bundle, "auto", "cpu", threads=1)
    assert chosen.name == "onnxruntime" and chosen.precision == "fp32"
    assert "backend auto: onnxruntime, not openvino: openvino is not installed" in caplog.text
    with pytest.raises(BackendError, match="cannot use OpenVINO: openvino is not installed"):
        create_backend(bundle, "openvino", "cpu")


def test_openvino_needs_the_cpu_and_bf16_needs_openvino(tiny_bundle):
    bundle = load_bundle(tiny_bundle[0])
    with pytest.raises(BackendError, match="OpenVINO backend runs on the CPU"):
        create_backend(bundle, "openvino", "cuda")
    with pytest.raises(BackendError, match="bf16 runs on the OpenVINO backend only"):
        create_backend(bundle, "onnxruntime", "cpu", "bf16")


def test_cli_bf16_without_it_is_one_error_line(tiny_bundle, tmp_path, monkeypatch, capsys):
    import cv2

    from runtime.infer import main as infer_main

    monkeypatch.setattr(ov_backend, "cpu_capabilities", lambda core: ["FP32", "INT8"])
    src = tmp_path / "in.png"
    cv2.imwrite(str(src), np.zeros((20, 24, 3), np.uint8))
    with pytest.raises(SystemExit) as exit_:
        infer_main(
            [
                str(src),
                "--model",
                str(tiny_bundle[0]),
                "--device",
                "cpu",
                "--backend",
                "openvino",
                "--precision",
                "bf16",
                "-q",
            ]
        )
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: this CPU has no native BF16 (OpenVINO reports FP32, INT8): use --precision fp32"
    ]
    assert not (tmp_path / "in_deblurred.png").exists()


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


def test_bad_and_stale_bundles_are_one_clear_error(tiny_bundle, tmp_path):
    broken = _copy(tiny_bundle[0], tmp_path / "broken")
    (broken / "restore.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(BackendError, match=r"OpenVINO cannot read .*restore\.onnx: ") as err:
        ov_backend.OpenVinoBackend(load_bundle(broken, verify=False), "fp32")
    assert "\n" not in str(err.value) and "Exception from" not in str(err.value)
    stale = _copy(tiny_bundle[0], tmp_path / "stale")
    manifest = json.loads((stale / "manifest.json").read_text())
    manifest["graphs"]["estimate"]["inputs"][0]["name"] = "rgb"
    (stale / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        BackendError,
        match=r"estimate\.onnx: inputs \['image'\] differ from the "
        r"manifest's \['rgb'\] \(a stale bundle",
    ):
        ov_backend.OpenVinoBackend(load_bundle(stale), "fp32")
