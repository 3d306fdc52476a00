"""FP32 ONNX -> FP16 ONNX with FP32 I/O, checked with ONNX Runtime on the CPU.

TensorRT 11 builds only strongly typed networks, so the FP16 precision has to be
in the ONNX file itself. Numerically sensitive nodes stay FP32: the reductions
that pool condition features (a mean over H x W in FP16 loses the small terms)
and the final residual ``image + out`` whose result is the deblurred image.
"""

import copy
from typing import Dict, List, Sequence, Set

import cv2
import numpy as np
import onnx
from onnxconverter_common import float16

from export.parity import session
from training.metrics import psnr

#: FP16 vs FP32 output PSNR (dB) below which the FP16 graph is rejected.
FP16_MIN_PSNR_DB = 45.0
#: The largest finite FP16 value: activations beyond it overflow to inf.
FP16_MAX = 65504.0
#: Op types kept in FP32 besides onnxconverter-common's own block list.
FP32_OPS = ("ReduceMean", "GlobalAveragePool")


def final_residual_adds(model: onnx.ModelProto) -> List[str]:
    """Names of the ``Add`` nodes that add a graph input straight onto a graph output."""
    inputs = {i.name for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "Add" and set(n.output) & outputs and set(n.input) & inputs
    ]


def _isolate_outputs(model: onnx.ModelProto, blocked: Set[str]) -> onnx.ModelProto:
    """Put an ``Identity`` between each FP32-kept node and the graph output it makes.

    onnxconverter-common 1.16 raises "The downstream node of the second cast node
    should be graph output" when a blocked node writes a graph output itself.
    """
    model = copy.deepcopy(model)
    outputs = {o.name for o in model.graph.output}
    nodes = list(model.graph.node)
    for node in nodes:
        if node.name not in blocked and node.op_type not in blocked:
            continue
        for i, name in enumerate(node.output):
            if name in outputs:
                node.output[i] = f"{name}_fp32"
                model.graph.node.append(
                    onnx.helper.make_node("Identity", [node.output[i]], [name], name=f"{name}_fp32_out")
                )
    return model


def _drop_fp16_round_trips(model: onnx.ModelProto) -> None:
    """Rewire ``x -> Cast(fp16) [-> Identity] -> Cast(fp32)`` to ``x -> Cast(fp32)``.

    keep_io_types puts such round trips around every FP32-kept node next to a graph
    input or output, which would round the FP32 image and result to FP16 anyway.
    Nodes left without consumers are removed.
    """
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}

    def cast_to(node, dtype) -> bool:
        return node.op_type == "Cast" and onnx.helper.get_attribute_value(node.attribute[0]) == dtype

    for node in graph.node:
        if not cast_to(node, onnx.TensorProto.FLOAT):
            continue
        src = producer.get(node.input[0])
        while src is not None and src.op_type == "Identity":
            src = producer.get(src.input[0])
        if src is not None and cast_to(src, onnx.TensorProto.FLOAT16):
            node.input[0] = src.input[0]
    keep = {o.name for o in graph.output}
    while True:
        used = keep | {i for n in graph.node for i in n.input}
        dead = [n for n in graph.node if not set(n.output) & used]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Convert to FP16 weights and activations, keeping FP32 inputs and outputs.

    Args:
        model: FP32 graph with named nodes.

    Returns:
        A new model; ``FP32_OPS`` and the final residual ``Add`` compute in FP32,
        and the FP32 values around them are never rounded through FP16.
    """
    ops = list(float16.DEFAULT_OP_BLOCK_LIST) + list(FP32_OPS)
    nodes = final_residual_adds(model)
    isolated = _isolate_outputs(model, set(ops) | set(nodes))
    half = float16.convert_float_to_float16(
        isolated, keep_io_types=True, op_block_list=ops, node_block_list=nodes
    )
    _drop_fp16_round_trips(half)
    return half


def validation_images(
    size_multiple: int, count: int = 4, height: int = 64, width: int = 96, seed: int = 0
) -> np.ndarray:
    """Images like the deployment's inputs, without any data set.

    Half are uniform noise (every pixel independent, the worst case for
    activations), half are smooth: low-resolution noise upscaled with OpenCV's
    bicubic filter, clipped to [0, 1], like the flat regions of a photo.

    Returns:
        (count, 3, H, W) float32 in [0, 1]; H, W rounded up to ``size_multiple``.
    """
    h = -(-height // size_multiple) * size_multiple
    w = -(-width // size_multiple) * size_multiple
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        if i % 2 == 0:
            img = rng.random((h, w, 3), dtype=np.float32)
        else:
            small = rng.random((max(h // 8, 2), max(w // 8, 2), 3), dtype=np.float32)
            img = np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)
        images.append(img.transpose(2, 0, 1))
    return np.stack(images).astype(np.float32)


def graph_feeds(fp32_models: Dict[str, onnx.ModelProto], images: np.ndarray) -> Dict[str, List[dict]]:
    """Per-graph inputs, chained through the FP32 graphs as the runtime chains them.

    Args:
        fp32_models: Graph name -> FP32 model (``condition`` optional).
        images: (N, 3, H, W) float32; one feed per image.

    Returns:
        Graph name -> list of feed dicts (batch 1 each).
    """
    feeds: Dict[str, List[dict]] = {name: [] for name in fp32_models}
    estimate = session(fp32_models["estimate"])
    condition = session(fp32_models["condition"]) if "condition" in fp32_models else None
    for image in images:
        image = image[None]
        feeds["estimate"].append({"image": image})
        (dmap,) = estimate.run(None, {"image": image})
        restore = {"image": image, "defocus_map": dmap}
        if condition is not None:
            feeds["condition"].append({"defocus_map": dmap})
            (restore["cond_mean"],) = condition.run(None, {"defocus_map": dmap})
        feeds["restore"].append(restore)
    return feeds


def with_all_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose every float node output is also a graph output."""
    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {
        v.name: v for v in inferred.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    present = {o.name for o in inferred.graph.output}
    extra = [floats[o] for n in inferred.graph.node for o in n.output if o in floats and o not in present]
    inferred.graph.output.extend(extra)
    return inferred


def max_activations(model: onnx.ModelProto, feeds: Sequence[dict]) -> Dict[str, float]:
    """Largest |value| of every float node output of an FP32 graph over ``feeds``."""
    exposed = with_all_outputs(model)
    sess = session(exposed)
    names = [o.name for o in sess.get_outputs()]
    peaks = dict.fromkeys(names, 0.0)
    for feed in feeds:
        for name, value in zip(names, sess.run(None, feed)):
            peaks[name] = max(peaks[name], float(np.abs(value).max()))
    return peaks


def check_fp16(fp32: onnx.ModelProto, fp16: onnx.ModelProto, feeds: Sequence[dict]) -> dict:
    """Compare an FP16 graph with its FP32 source on ``feeds``.

    Returns:
        {"psnr_db_vs_fp32": worst over feeds, "max_abs_error", "nan_or_inf": bool,
        "max_activation": {node output: largest |value| in FP32}}.
    """
    ref, half = session(fp32), session(fp16)
    psnrs, errors, bad = [], [], False
    for feed in feeds:
        (want,), (got,) = ref.run(None, feed), half.run(None, feed)
        bad = bad or not bool(np.isfinite(got).all())
        errors.append(float(np.abs(got - want).max()))
        psnrs.append(psnr(got, want, data_range=None))
    return {
        "psnr_db_vs_fp32": min(psnrs),
        "max_abs_error": max(errors),
        "nan_or_inf": bad,
        "max_activation": max_activations(fp32, feeds),
    }


def fp16_problem(name: str, report: dict) -> str:
    """One line saying why an FP16 graph fails its check, or "" when it passes.

    An FP32 activation beyond ``FP16_MAX`` fails even where ONNX Runtime's FP16
    output stayed finite: its CPU kernels compute FP16 nodes in FP32 and drop the
    casts in between, so only a GPU shows the overflow.
    """
    where, peak = max(report["max_activation"].items(), key=lambda kv: kv[1], default=("", 0.0))
    if report["nan_or_inf"]:
        return f"{name}: FP16 output holds NaN or Inf (largest FP32 activation {peak:.4g} at {where})"
    if peak > FP16_MAX:
        return f"{name}: activation {peak:.4g} at {where} overflows FP16 (max {FP16_MAX:g})"
    if report["psnr_db_vs_fp32"] < FP16_MIN_PSNR_DB:
        return f"{name}: FP16 vs FP32 PSNR {report['psnr_db_vs_fp32']:.1f} dB < {FP16_MIN_PSNR_DB:g} dB"
    return ""
