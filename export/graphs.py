"""The three deployment graphs of a ``DefocusDeblurNet`` and their ONNX export.

The runtime runs the model as separate graphs so that a user can rescale or
replace the defocus map, and so that large images tile exactly:

    estimate:   image (N,3,H,W)                               -> defocus_map (N,1,H,W)
    condition:  defocus_map (N,1,H,W)                         -> cond_mean (N,Cc)
    restore:    image, defocus_map[, cond_mean (N,Cc)]        -> deblurred (N,3,H,W)

``condition`` exists only for the variants whose SFT layers pool over the image
(``sft_dec``, ``sft_fdec``); ``restore`` then takes ``cond_mean`` as an input.
All tensors are float32, RGB in [0, 1]; H and W must be multiples of the
config's ``size_multiple`` (the runtime pads).
"""

from pathlib import Path
from typing import Any, Dict, List

import onnx
import torch
from torch import nn

from training.archs import DefocusDeblurNet

OPSET = 17
#: IR 9 (onnx 1.15) is read by onnxruntime >= 1.16 and TensorRT 10's parser.
IR_VERSION = 9


class Graph(nn.Module):
    """One method of a ``DefocusDeblurNet`` (``estimate``, ``condition_mean`` or
    ``restore``) as the ``forward`` of a module, for export."""

    def __init__(self, model: DefocusDeblurNet, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *inputs):
        return getattr(self.model, self.method)(*inputs)


def graph_specs(model: DefocusDeblurNet) -> Dict[str, dict]:
    """Name -> module, example inputs, input and output names of each graph."""
    m = model.config.size_multiple
    image = torch.rand(1, 3, 8 * m, 8 * m)
    dmap = torch.rand(1, 1, 8 * m, 8 * m)
    specs = {
        "estimate": {
            "module": Graph(model, "estimate"),
            "args": (image,),
            "inputs": ["image"],
            "outputs": ["defocus_map"],
        }
    }
    restore: Dict[str, Any] = {
        "module": Graph(model, "restore"),
        "args": (image, dmap),
        "inputs": ["image", "defocus_map"],
        "outputs": ["deblurred"],
    }
    if model.uses_pooling:
        specs["condition"] = {
            "module": Graph(model, "condition_mean"),
            "args": (dmap,),
            "inputs": ["defocus_map"],
            "outputs": ["cond_mean"],
        }
        restore["args"] = (image, dmap, model.condition_mean(dmap).detach())
        restore["inputs"].append("cond_mean")
    specs["restore"] = restore
    return specs


def _dynamic_axes(names: List[str]) -> Dict[str, Dict[int, str]]:
    axes = {}
    for name in names:
        axes[name] = {0: "batch"} if name == "cond_mean" else {0: "batch", 2: "height", 3: "width"}
    return axes


def export_graph(spec: dict, path: Path) -> onnx.ModelProto:
    """Export one graph with dynamic batch/height/width and pin its IR version."""
    names = spec["inputs"] + spec["outputs"]
    with torch.no_grad():
        torch.onnx.export(
            spec["module"].eval(),
            spec["args"],
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=spec["inputs"],
            output_names=spec["outputs"],
            dynamic_axes=_dynamic_axes(names),
        )
    proto = onnx.load(str(path))
    proto.ir_version = IR_VERSION
    return proto
