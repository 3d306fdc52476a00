"""Checkpoint -> ONNX bundle: parity, metadata, TensorRT lint, FP16, bad input."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from common.hashing import sha256_file
from export import onnx as export_onnx
from export import verify as export_verify
from export.bundle_writer import get_metadata, onnx_file, read_manifest
from export.fp16 import FP16_MAX, check_fp16, fp16_problem, max_activations, to_fp16, validation_images
from export.graphs import IR_VERSION, export_graph, graph_specs
from export.parity import PARITY_MIN_PSNR_DB, session
from export.trt_lint import LintError, check_model, lint_model
from runtime.gpu import import_tensorrt
from training.archs import DefocusDeblurNet
from training.checkpoint import load_checkpoint, save_checkpoint
from training.metrics import psnr
from training.presets import get_config

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT_FILES = {"model.safetensors", "config.json"}


def tiny_config(preset="small", variant="sft_dec"):
    return dataclasses.replace(
        get_config(preset, variant),
        channels=8,
        num_blocks=1,
        dme_channels=8,
        dme_blocks=1,
        dme_dilated_blocks=1,
        dme_full_channels=0 if preset == "paper" else 4,
        cond_channels=8,
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    save_checkpoint(folder, DefocusDeblurNet(tiny_config()))
    return folder


@pytest.fixture(scope="module")
def bundle(checkpoint):
    export_onnx.export_bundle(checkpoint, checkpoint)
    return checkpoint


def _one_line_failure(capsys, argv):
    rc = export_onnx.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def _leftovers(folder: Path):
    """Staging folders and temp files an export may have left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if ".export-" in p.name or p.suffix == ".tmp")


# --- the bundle -----------------------------------------------------------------


def test_bundle_files_and_hashes(bundle):
    manifest = read_manifest(bundle)
    assert set(manifest["graphs"]) == {"estimate", "condition", "restore"}
    for name, graph in manifest["graphs"].items():
        assert graph["files"] == {"fp32": f"{name}.onnx", "fp16": f"{name}.fp16.onnx"}
        for precision, file in graph["files"].items():
            assert sha256_file(bundle / file) == graph["sha256"][precision]
    assert manifest["checkpoint"]["sha256"] == sha256_file(bundle / "model.safetensors")
    assert _leftovers(bundle) == [] and not _leftovers(bundle.parent)


def test_manifest_facts(bundle):
    manifest = read_manifest(bundle)
    config = tiny_config()
    assert (manifest["preset"], manifest["variant"]) == ("small", "sft_dec")
    assert manifest["size_multiple"] == config.size_multiple == 2
    assert manifest["cond_channels"] == 8
    assert manifest["layout"] == "NCHW"
    assert manifest["focus_gate"] == [0.0, 0.0]
    rf = manifest["receptive_field"]
    assert 0 < rf["estimate"] <= rf["total"] and 0 < rf["restore"] <= rf["total"]
    assert set(manifest["versions"]) == set(export_onnx.PACKAGES)


@pytest.mark.parametrize(
    "graph, inputs, outputs",
    [
        (
            "estimate",
            [("image", ["batch", 3, "height", "width"])],
            [("defocus_map", ["batch", 1, "height", "width"])],
        ),
        ("condition", [("defocus_map", ["batch", 1, "height", "width"])], [("cond_mean", ["batch", 8])]),
        (
            "restore",
            [
                ("image", ["batch", 3, "height", "width"]),
                ("defocus_map", ["batch", 1, "height", "width"]),
                ("cond_mean", ["batch", 8]),
            ],
            [("deblurred", ["batch", 3, "height", "width"])],
        ),
    ],
)
def test_manifest_io(bundle, graph, inputs, outputs):
    entry = read_manifest(bundle)["graphs"][graph]
    assert [(i["name"], i["shape"]) for i in entry["inputs"]] == inputs
    assert [(o["name"], o["shape"]) for o in entry["outputs"]] == outputs
    assert {i["dtype"] for i in entry["inputs"] + entry["outputs"]} == {"float32"}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("graph", ["estimate", "condition", "restore"])
def test_metadata_round_trip(bundle, graph, precision):
    manifest = read_manifest(bundle)
    model = onnx.load(str(bundle / onnx_file(graph, precision)))
    props = get_metadata(model)
    assert model.ir_version == IR_VERSION
    for key in ("preset", "variant", "map_units", "input_normalisation", "layout"):
        assert props[key] == manifest[key]
    for key in ("size_multiple", "receptive_field", "map_radius_scale_px", "cond_channels"):
        assert json.loads(props[key]) == manifest[key]
    assert (props["graph"], props["precision"]) == (graph, precision)
    assert json.loads(props["inputs"]) == manifest["graphs"][graph]["inputs"]
    assert json.loads(props["outputs"]) == manifest["graphs"][graph]["outputs"]


# --- parity ---------------------------------------------------------------------


@pytest.mark.parametrize("batch, h, w", [(2, 17 * 2, 23 * 2), (1, 2, 2), (1, 6, 50)])
def test_onnx_matches_torch_on_odd_sizes(bundle, batch, h, w):
    model, _ = load_checkpoint(bundle)
    rng = np.random.default_rng(1)
    image = rng.random((batch, 3, h, w), dtype=np.float32)
    (dmap,) = session(onnx.load(str(bundle / "estimate.onnx"))).run(None, {"image": image})
    (cond,) = session(onnx.load(str(bundle / "condition.onnx"))).run(None, {"defocus_map": dmap})
    (out,) = session(onnx.load(str(bundle / "restore.onnx"))).run(
        None, {"image": image, "defocus_map": dmap, "cond_mean": cond}
    )
    with torch.no_grad():
        want_out, want_map = model(torch.from_numpy(image))
    np.testing.assert_allclose(dmap, want_map.numpy(), atol=1e-5)
    np.testing.assert_allclose(out, want_out.numpy(), atol=1e-5)


def test_a_gated_restore_graph_passes_focus_through_as_torch_does(tmp_path):
    torch.manual_seed(0)
    model = DefocusDeblurNet(dataclasses.replace(tiny_config(), gate_low=0.1, gate_high=0.3)).eval()
    specs = graph_specs(model)
    path = tmp_path / "restore.onnx"
    export_graph(specs["restore"], path)
    rng = np.random.default_rng(2)
    image = rng.random((1, 3, 8, 12), dtype=np.float32)
    dmap = np.repeat(np.linspace(0.0, 0.5, 12, dtype=np.float32)[None, None, None], 8, axis=2)
    cond = model.condition_mean(torch.from_numpy(dmap)).detach().numpy()
    (out,) = session(onnx.load(str(path))).run(None, {"image": image, "defocus_map": dmap, "cond_mean": cond})
    with torch.no_grad():
        want = model.restore(torch.from_numpy(image), torch.from_numpy(dmap), torch.from_numpy(cond)).numpy()
    np.testing.assert_allclose(out, want, atol=1e-5)
    in_focus = dmap[0, 0] <= 0.1
    np.testing.assert_array_equal(out[0][:, in_focus], image[0][:, in_focus])
    assert not np.allclose(out[0][:, ~in_focus], image[0][:, ~in_focus], atol=1e-3)


def test_manifest_parity_figures(bundle):
    parity = read_manifest(bundle)["parity"]
    for entry in parity.values():
        assert entry["psnr_db"] >= PARITY_MIN_PSNR_DB
        assert 0 <= entry["max_abs_error"] < 1e-4
        assert [34, 46] in entry["sizes"]


@pytest.mark.parametrize("offset, expected", [(0.1, 20.0), (0.01, 40.0), (0.001, 60.0)])
def test_psnr_against_closed_form(offset, expected):
    ref = np.array([0.0, 1.0, 0.5, 0.25])
    assert psnr(ref + offset, ref, data_range=None) == pytest.approx(expected, abs=1e-6)
    assert psnr(ref + offset, ref) == pytest.approx(expected, abs=1e-6)  # ref spans [0, 1]
    assert psnr(2 * (ref + offset), 2 * ref, data_range=None) == pytest.approx(expected, abs=1e-6)


def test_psnr_identical_is_inf():
    ref = np.linspace(0, 1, 10)
    assert psnr(ref.copy(), ref) == psnr(ref, ref, data_range=None) == math.inf


# --- TensorRT lint --------------------------------------------------------------


@pytest.mark.parametrize(
    "file",
    [
        "estimate.onnx",
        "condition.onnx",
        "restore.onnx",
        "estimate.fp16.onnx",
        "condition.fp16.onnx",
        "restore.fp16.onnx",
    ],
)
def test_lint_passes_exported_graphs(bundle, file):
    assert lint_model(onnx.load(str(bundle / file))) == []


def _plant(model, node, initializers=()):
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.graph.node.append(node)
    model.graph.initializer.extend(initializers)
    return model


@pytest.mark.parametrize(
    "planted, expected",
    [
        (
            helper.make_node("Unique", ["image"], ["u"], name="planted_unique"),
            "Unique node 'planted_unique': operator not supported",
        ),
        (
            helper.make_node("MyOp", ["image"], ["u"], name="custom", domain="com.example"),
            "custom domain 'com.example'",
        ),
        (
            helper.make_node("Resize", ["image", "", "scales"], ["u"], name="aa", antialias=1, mode="linear"),
            "antialias=1",
        ),
        (
            helper.make_node("Resize", ["image", "", "scales"], ["u"], name="cubic", mode="cubic"),
            "mode=cubic",
        ),
        (
            helper.make_node("ReduceSum", ["image", "image_axes"], ["u"], name="rs"),
            "input 1 ('image_axes') must be a constant",
        ),
        (
            helper.make_node("MaxPool", ["image"], ["u", "idx"], name="mp", kernel_shape=[2, 2]),
            "the Indices output",
        ),
    ],
)
def test_lint_catches_planted(bundle, planted, expected):
    model = onnx.load(str(bundle / "estimate.onnx"))
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    planted_model = _plant(model, planted, [scales])
    problems = lint_model(planted_model)
    assert any(expected in p for p in problems), problems
    with pytest.raises(LintError, match="TensorRT 10.15 cannot parse it") as info:
        check_model(planted_model, "estimate.onnx")
    assert "\n" not in str(info.value)


def test_lint_catches_opset_out_of_range(bundle):
    model = onnx.load(str(bundle / "estimate.onnx"))
    model.opset_import[0].version = 25
    assert lint_model(model) == ["opset 25 outside TensorRT 10.15's 9..24"]


# --- FP16 -----------------------------------------------------------------------


def _producer(model, name):
    return next(n for n in model.graph.node if name in n.output)


def test_fp16_keeps_reduction_and_residual_in_fp32(bundle):
    condition = onnx.load(str(bundle / "condition.fp16.onnx"))
    reduce = next(n for n in condition.graph.node if n.op_type == "ReduceMean")
    cast = _producer(condition, reduce.input[0])
    assert cast.op_type == "Cast" and cast.attribute[0].i == TensorProto.FLOAT
    restore = onnx.load(str(bundle / "restore.fp16.onnx"))
    final = next(n for n in restore.graph.node if n.op_type == "Add" and "image" in n.input)
    other = _producer(restore, next(i for i in final.input if i != "image"))
    assert other.op_type == "Cast" and other.attribute[0].i == TensorProto.FLOAT
    # No FP16 round trip of an FP32 value anywhere.
    for node in restore.graph.node:
        if node.op_type == "Cast" and node.attribute[0].i == TensorProto.FLOAT:
            src = next((n for n in restore.graph.node if node.input[0] in n.output), None)
            assert not (
                src is not None and src.op_type == "Cast" and src.attribute[0].i == TensorProto.FLOAT16
            )


@pytest.mark.parametrize("graph", ["estimate", "condition", "restore"])
def test_fp16_weights_and_fp32_io(bundle, graph):
    model = onnx.load(str(bundle / f"{graph}.fp16.onnx"))
    dtypes = {t.data_type for t in model.graph.initializer if len(t.dims) == 4}
    assert dtypes == {TensorProto.FLOAT16}
    io = list(model.graph.input) + list(model.graph.output)
    assert {v.type.tensor_type.elem_type for v in io} == {TensorProto.FLOAT}


def test_fp16_close_to_fp32_on_smooth_images(bundle):
    image = validation_images(2, count=2, height=40, width=30, seed=5)[1:]
    ref = session(onnx.load(str(bundle / "estimate.onnx"))).run(None, {"image": image})[0]
    half = session(onnx.load(str(bundle / "estimate.fp16.onnx"))).run(None, {"image": image})[0]
    assert image.shape == (1, 3, 40, 30)
    assert np.isfinite(half).all() and psnr(half, ref, data_range=None) >= 45
    for report in read_manifest(bundle)["fp16"].values():
        assert report["psnr_db_vs_fp32"] >= 45 and report["nan_or_inf"] is False


def _scale_graph(factor):
    """y = (x * factor) + x, named nodes."""
    nodes = [
        helper.make_node("Mul", ["x", "k"], ["scaled"], name="mul"),
        helper.make_node("Add", ["scaled", "x"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor("k", TensorProto.FLOAT, [1], [factor])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = IR_VERSION
    return model


def test_max_activations_match_numpy():
    x = np.array([[1.0, -2.0, 0.5, 3.0]], np.float32)
    peaks = max_activations(_scale_graph(3.0), [{"x": x}, {"x": x / 2}])
    assert peaks == pytest.approx({"scaled": 9.0, "y": 12.0})


def test_fp16_overflow_is_reported():
    fp32 = _scale_graph(1e4)
    feeds = [{"x": np.array([[10.0, 1.0, 2.0, 3.0]], np.float32)}]
    report = check_fp16(fp32, to_fp16(fp32), feeds)
    assert report["max_activation"]["scaled"] == pytest.approx(1e5) and 1e5 > FP16_MAX
    # ONNX Runtime's CPU kernels run FP16 nodes in FP32, so its output may stay finite:
    # the activation report is what catches the overflow.
    assert report["max_activation"]["y"] == pytest.approx(100010)
    assert fp16_problem("g", report) == "g: activation 1e+05 at y overflows FP16 (max 65504)"


@pytest.mark.parametrize(
    "report, expected",
    [
        (
            {"nan_or_inf": True, "psnr_db_vs_fp32": 80.0, "max_activation": {"a": 2.0}},
            "g: FP16 output holds NaN or Inf (largest FP32 activation 2 at a)",
        ),
        (
            {"nan_or_inf": False, "psnr_db_vs_fp32": 44.5, "max_activation": {"a": 2.0}},
            "g: FP16 vs FP32 PSNR 44.5 dB < 45 dB",
        ),
        ({"nan_or_inf": False, "psnr_db_vs_fp32": 45.0, "max_activation": {"a": FP16_MAX}}, ""),
    ],
)
def test_fp16_problem_lines(report, expected):
    assert fp16_problem("g", report) == expected


def test_validation_images_shapes_and_range():
    images = validation_images(3, count=4, height=20, width=31)
    assert images.shape == (4, 3, 21, 33) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1
    # Smooth images: neighbouring pixels differ far less than in noise.
    step = np.abs(np.diff(images, axis=-1)).mean(axis=(1, 2, 3))
    assert step[1] < step[0] / 4 and step[3] < step[2] / 4


# --- bad input: one line, exit 1, nothing left behind ---------------------------


def test_missing_checkpoint(tmp_path, capsys):
    err = _one_line_failure(capsys, ["--checkpoint", tmp_path / "nope", "--out", tmp_path / "out"])
    assert err == f"export failed: {tmp_path / 'nope'}: no such checkpoint"
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_corrupt_checkpoint(tmp_path, checkpoint, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((checkpoint / "config.json").read_text())
    (bad / "model.safetensors").write_bytes(b"\x00garbage")
    err = _one_line_failure(capsys, ["--checkpoint", bad, "--out", bad])
    assert "unreadable weights" in err
    assert {p.name for p in bad.iterdir()} == CHECKPOINT_FILES


def test_checkpoint_of_another_preset(checkpoint, tmp_path, capsys):
    err = _one_line_failure(
        capsys, ["--checkpoint", checkpoint, "--out", tmp_path / "out", "--preset", "paper"]
    )
    assert err.endswith("checkpoint is preset 'small', expected 'paper'")
    assert not (tmp_path / "out").exists()


def test_unwritable_output(checkpoint, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    err = _one_line_failure(capsys, ["--checkpoint", checkpoint, "--out", blocker / "bundle"])
    assert err == f"export failed: {blocker / 'bundle'}: cannot create a folder under {blocker} (a file)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_failed_gate_leaves_nothing(checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(export_onnx, "PARITY_MIN_PSNR_DB", math.inf)
    err = _one_line_failure(capsys, ["--checkpoint", checkpoint, "--out", out])
    assert err.startswith("export failed: estimate: ONNX Runtime vs PyTorch PSNR")
    assert list(tmp_path.iterdir()) == []


def test_bundle_the_runtime_cannot_load_is_not_written(checkpoint, tmp_path, capsys, monkeypatch):
    """The export ends with ``runtime.load_bundle`` on what it wrote, before renaming it in."""
    real_write = export_onnx.write_manifest

    def without_receptive_field(folder, manifest):
        real_write(folder, {k: v for k, v in manifest.items() if k != "receptive_field"})

    monkeypatch.setattr(export_onnx, "write_manifest", without_receptive_field)
    out = tmp_path / "out"
    err = _one_line_failure(capsys, ["--checkpoint", checkpoint, "--out", out])
    assert err.startswith("export failed: ") and err.endswith("missing or bad key 'receptive_field'")
    assert list(tmp_path.iterdir()) == []


def test_cli_subprocess_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "export.onnx",
            "--checkpoint",
            str(tmp_path / "x"),
            "--out",
            str(tmp_path / "o"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"export failed: {tmp_path / 'x'}: no such checkpoint"


def test_summary_table(bundle):
    lines = export_onnx.summary(read_manifest(bundle))
    assert lines[0].split()[:2] == ["graph", "parity"]
    assert [line.split()[0] for line in lines[1:]] == ["estimate", "condition", "restore"]


# --- verify without TensorRT ----------------------------------------------------


@pytest.mark.skipif(import_tensorrt() is not None, reason="the TensorRT path runs engines instead")
def test_verify_compares_fp16_onnx_without_tensorrt(bundle, capsys):
    assert export_verify.main(["--bundle", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "comparing ONNX Runtime FP16 (no TensorRT run: tensorrt is not installed" in out
    # polygraphy's own "[W] ..." lines (e.g. a map with zeros: the network clamps it) come between.
    graphs = [line for line in out.splitlines()[1:] if not line.startswith("[")]
    assert [line.split(":")[0] for line in graphs] == ["estimate", "condition", "restore"]
    assert all("PASSED" in line for line in graphs)


def test_verify_missing_bundle(tmp_path, capsys):
    assert export_verify.main(["--bundle", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"verify failed: model {tmp_path / 'none'} does not exist"


def test_export_is_reproducible_whatever_the_thread_count(tmp_path):
    """``make export`` twice on one checkpoint writes the same bytes (git status stays clean),
    also where the caller's thread settings differ (torch's and ONNX Runtime's pools)."""
    # The small preset's widths: at them torch splits the restore graph's sums over threads
    # differently for 1 and 2 threads (the tiny widths run the same either way).
    checkpoint = tmp_path / "ckpt"
    torch.manual_seed(0)
    config = dataclasses.replace(tiny_config(), channels=48, dme_channels=24, cond_channels=32)
    save_checkpoint(checkpoint, DefocusDeblurNet(config))
    before = torch.get_num_threads()
    written = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = tmp_path / f"threads{threads}"
            export_onnx.export_bundle(checkpoint, out)
            written.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    finally:
        torch.set_num_threads(before)
    assert written[0].keys() == written[1].keys()
    assert [name for name in written[0] if written[0][name] != written[1][name]] == []
