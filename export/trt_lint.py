"""Static check that TensorRT's ONNX parser can take a graph, without TensorRT.

The operator table is onnx-tensorrt's ``docs/operators.md`` as published for
TensorRT 10.15 (opset 9 to 24): every operator marked ``Y`` there, and the
restrictions of that table that a graph can show statically. Operators that
10.15 added over older 10.x releases (Attention, RotaryEmbedding, TensorScatter,
RMSNormalization) are none that this project's graphs use.

    python -m export.trt_lint models/default/*.onnx
"""

import argparse
import sys
from typing import Dict, Iterable, List, Optional, Set

import onnx
from google.protobuf.message import DecodeError

TENSORRT_VERSION = "10.15"
OPSET_RANGE = (9, 24)

SUPPORTED_OPS = frozenset(
    """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool
BatchNormalization BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant
ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow
HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM
LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod
Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu
QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence
RMSNormalization RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter
ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter
ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split()
)

#: Inputs (by position) that the table says must be initializers / build-time constants.
CONSTANT_INPUTS: Dict[str, tuple] = {
    **{
        op: (1,)
        for op in (
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceMax",
            "ReduceMean",
            "ReduceMin",
            "ReduceProd",
            "ReduceSum",
            "ReduceSumSquare",
        )
    },
    "CumSum": (1,),
    "OneHot": (1,),
    "Dropout": (2,),
    "STFT": (1, 2),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
}

RESIZE_MODES = {"nearest", "linear"}
RESIZE_COORDINATES = {
    "half_pixel",
    "pytorch_half_pixel",
    "tf_half_pixel_for_nn",
    "asymmetric",
    "align_corners",
}
RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}

UNSUPPORTED_DTYPES = {
    onnx.TensorProto.STRING,
    onnx.TensorProto.COMPLEX64,
    onnx.TensorProto.COMPLEX128,
    onnx.TensorProto.UINT16,
    onnx.TensorProto.UINT32,
    onnx.TensorProto.UINT64,
    onnx.TensorProto.INT16,
}


class LintError(ValueError):
    """A graph holds something TensorRT's ONNX parser rejects (one-line message)."""


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _attribute_problems(node: onnx.NodeProto) -> List[str]:
    """Restrictions of the operator table that an attribute shows."""
    a, op = _attrs(node), node.op_type
    problems = []
    if op == "Resize":
        if a.get("antialias", 0):
            problems.append("antialias=1 (antialiasing is not supported)")
        if _text(a.get("mode", "nearest")) not in RESIZE_MODES:
            problems.append(f"mode={_text(a['mode'])}")
        if _text(a.get("coordinate_transformation_mode", "half_pixel")) not in RESIZE_COORDINATES:
            problems.append(f"coordinate_transformation_mode={_text(a['coordinate_transformation_mode'])}")
        if _text(a.get("nearest_mode", "round_prefer_floor")) not in RESIZE_NEAREST:
            problems.append(f"nearest_mode={_text(a['nearest_mode'])}")
        if _text(a.get("keep_aspect_ratio_policy", "stretch")) != "stretch":
            problems.append(f"keep_aspect_ratio_policy={_text(a['keep_aspect_ratio_policy'])}")
    if op in ("AveragePool", "MaxPool", "LpPool") and any(d != 1 for d in a.get("dilations", [])):
        problems.append("dilations other than 1")
    if op == "MaxPool" and len([o for o in node.output if o]) > 1:
        problems.append("the Indices output")
    if op == "LayerNormalization" and len([o for o in node.output if o]) > 1:
        problems.append("outputs other than Y")
    if op == "TopK" and a.get("sorted", 1) != 1:
        problems.append("sorted=0")
    if op == "ScatterND" and _text(a.get("reduction", "none")) != "none":
        problems.append(f"reduction={_text(a['reduction'])}")
    if op == "LSTM" and (a.get("input_forget", 0) or a.get("layout", 0)):
        problems.append("input_forget or layout other than 0")
    if op == "Constant" and {"sparse_value", "value_string", "value_strings"} & set(a):
        problems.append("a sparse or string value")
    return problems


def _graph_problems(graph: onnx.GraphProto, constants: Set[str]) -> List[str]:
    constants = constants | {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    problems = [
        f"tensor {t.name!r} has type {onnx.TensorProto.DataType.Name(t.data_type)}"
        for t in graph.initializer
        if t.data_type in UNSUPPORTED_DTYPES
    ]
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type in UNSUPPORTED_DTYPES:
            problems.append(f"graph I/O {value.name!r} has an unsupported type")
    for node in graph.node:
        where = f"{node.op_type} node {node.name or node.output[0]!r}"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom domain {node.domain!r} needs a TensorRT plugin")
            continue
        if node.op_type not in SUPPORTED_OPS:
            problems.append(f"{where}: operator not supported")
            continue
        problems += [f"{where}: {p}" for p in _attribute_problems(node)]
        for i in CONSTANT_INPUTS.get(node.op_type, ()):
            if i < len(node.input) and node.input[i] and node.input[i] not in constants:
                problems.append(f"{where}: input {i} ({node.input[i]!r}) must be a constant")
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                problems += _graph_problems(attr.g, constants)
    return problems


def lint_model(model: onnx.ModelProto) -> List[str]:
    """Everything in ``model`` that TensorRT's ONNX parser rejects; empty when clean."""
    problems = []
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and not OPSET_RANGE[0] <= opset.version <= OPSET_RANGE[1]:
            problems.append(
                f"opset {opset.version} outside TensorRT {TENSORRT_VERSION}'s "
                f"{OPSET_RANGE[0]}..{OPSET_RANGE[1]}"
            )
    return problems + _graph_problems(model.graph, set())


def check_model(model: onnx.ModelProto, name: str) -> None:
    """Raise ``LintError`` naming the first problems of ``model``, if any."""
    problems = lint_model(model)
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise LintError(
            f"{name}: TensorRT {TENSORRT_VERSION} cannot parse it: " + "; ".join(problems[:3]) + more
        )


def main(argv: Optional[Iterable[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.trt_lint", description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="ONNX files")
    args = parser.parse_args(argv)
    status = 0
    for path in args.models:
        try:
            check_model(onnx.load(path), path)
            print(f"{path}: ok for TensorRT {TENSORRT_VERSION}")
        except LintError as exc:
            print(exc, file=sys.stderr)
            status = 1
        except (OSError, DecodeError) as exc:
            print(f"{path}: cannot read ONNX ({type(exc).__name__})", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
