"""Bundle -> Triton Inference Server model repository.

    python -m export.triton --bundle models/default --out triton_repo [--kind cpu|gpu] [--instances N]

Writes::

    REPO/README.md                 how to start each kind of model
    REPO/deblur/config.pbtxt       Python backend: the runtime with its exact tiling
    REPO/deblur/1/model.py         (export/triton_model.py), with runtime/, common/ and bundle/
    REPO/<graph>_onnx/             each graph on the onnxruntime_onnx platform (FP32 ONNX)
    REPO/<graph>_plan/             each graph on the tensorrt_plan platform (FP16 engine), where
                                   the bundle has engines

The ``deblur`` model is the one to serve: it takes one image of any size and
returns the deblurred image and its defocus map. The graph models are for users
of NVIDIA's container who chain the graphs themselves (an ensemble or BLS); their
dims and dtypes come from the manifest, and dynamic batching merges same-size
tiles from many clients. The repository is written to a temp folder and renamed
into place; an existing REPO is replaced only with ``--force``.
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from export.bundle_writer import check_writable
from runtime.backend import BACKENDS
from runtime.bundle import Bundle, GraphEntry, TensorSpec, load_bundle
from runtime.errors import BundleError, DeblurError

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
MODEL_TEMPLATE = Path(__file__).with_name("triton_model.py")
#: Packages copied beside model.py: the runtime and what it imports.
RUNTIME_PACKAGES = ("runtime", "common")
DEBLUR = "deblur"
TRITON_DTYPES = {
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
}
IMAGE_DTYPES = ("uint8", "uint16", "float32")
#: Largest wait for a fuller batch in the graph models' dynamic batcher.
QUEUE_DELAY_US = 2000


def _tensor(name: str, dtype: str, dims: Sequence[int], optional: bool = False) -> str:
    extra = " optional: true" if optional else ""
    return (
        f'  {{ name: "{name}" data_type: {TRITON_DTYPES[dtype]} '
        f"dims: [ {', '.join(str(d) for d in dims)} ]{extra} }}"
    )


def _tensor_block(kind: str, tensors: Iterable[str]) -> str:
    return f"{kind} [\n" + ",\n".join(tensors) + "\n]\n"


def _parameters(params: Dict[str, str]) -> str:
    return "".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in params.items()
    )


def _instance_group(kind: str, count: int) -> str:
    return f"instance_group [ {{ kind: KIND_{kind.upper()} count: {count} }} ]\n"


def deblur_config(args: argparse.Namespace) -> str:
    """``config.pbtxt`` of the Python-backend ``deblur`` model.

    One request is one image (``max_batch_size: 0``): whole images of different
    sizes cannot share a batch, and the runtime already batches the tiles of one
    image (``tile_batch``). Concurrency comes from ``instance_group`` count.
    """
    inputs = [_tensor(f"image_{d}", d, (-1, -1, 3), optional=True) for d in IMAGE_DTYPES]
    inputs += [
        _tensor("defocus_scale", "float32", (1,), optional=True),
        _tensor("defocus_map", "float32", (-1, -1), optional=True),
    ]
    outputs = [_tensor(f"deblurred_{d}", d, (-1, -1, 3)) for d in IMAGE_DTYPES]
    outputs.append(_tensor("defocus_map_used", "float32", (-1, -1)))
    params = {
        "backend": args.backend,
        "precision": args.precision or "",
        "tile": _text(args.tile),
        "tile_batch": _text(args.tile_batch),
        "threads": _text(args.threads),
        "max_side": str(args.max_side),
        "max_pixels": str(args.max_pixels),
    }
    return (
        f'name: "{DEBLUR}"\nbackend: "python"\nmax_batch_size: 0\n'
        + _tensor_block("input", inputs)
        + _tensor_block("output", outputs)
        + _instance_group(args.kind, args.instances)
        + _parameters(params)
    )


def _text(value: Optional[int]) -> str:
    """A parameter value: config.pbtxt parameters are strings, "" for the runtime's default."""
    return "" if value is None else str(value)


def _dims(spec: TensorSpec) -> List[int]:
    """Manifest shape without the batch dimension, symbolic sizes as -1."""
    return [d if isinstance(d, int) else -1 for d in spec.shape[1:]]


def graph_config(name: str, graph: GraphEntry, platform: str, max_batch: int, kind: str, count: int) -> str:
    """``config.pbtxt`` of one graph on a platform backend, dims and dtypes from the manifest."""
    inputs = [_tensor(t.name, t.dtype, _dims(t)) for t in graph.inputs]
    outputs = [_tensor(t.name, t.dtype, _dims(t)) for t in graph.outputs]
    return (
        f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch}\n'
        + _tensor_block("input", inputs)
        + _tensor_block("output", outputs)
        + f"dynamic_batching {{ max_queue_delay_microseconds: {QUEUE_DELAY_US} }}\n"
        + _instance_group(kind, count)
    )


def _bundle_files(bundle: Bundle) -> List[Path]:
    """manifest.json, every ONNX graph and every engine the manifest lists."""
    files = [bundle.root / "manifest.json"]
    files += [path for graph in bundle.graphs.values() for path in graph.files.values()]
    files += [bundle.root / g["file"] for e in bundle.engines.values() for g in e["graphs"].values()]
    return files


def write_deblur(stage: Path, bundle: Bundle, args: argparse.Namespace) -> None:
    model = stage / DEBLUR
    version = model / "1"
    (version / "bundle").mkdir(parents=True)
    shutil.copyfile(MODEL_TEMPLATE, version / "model.py")
    for package in RUNTIME_PACKAGES:
        shutil.copytree(
            PACKAGE_ROOT / package,
            version / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "README.md"),
        )
    for path in _bundle_files(bundle):
        shutil.copyfile(path, version / "bundle" / path.name)
    (model / "config.pbtxt").write_text(deblur_config(args))


def write_graphs(stage: Path, bundle: Bundle, args: argparse.Namespace) -> List[str]:
    """The graph models; returns their names."""
    names = []
    for graph_name, graph in bundle.graphs.items():
        name = f"{graph_name}_onnx"
        (stage / name / "1").mkdir(parents=True)
        shutil.copyfile(bundle.onnx_path(graph_name, "fp32"), stage / name / "1" / "model.onnx")
        (stage / name / "config.pbtxt").write_text(
            graph_config(name, graph, "onnxruntime_onnx", args.max_batch, args.kind, 1)
        )
        names.append(name)
    engines = bundle.engines.get("fp16")
    if engines:
        max_batch = int(engines["profile"]["max"][0])
        for graph_name, graph in bundle.graphs.items():
            name = f"{graph_name}_plan"
            (stage / name / "1").mkdir(parents=True)
            shutil.copyfile(
                bundle.root / engines["graphs"][graph_name]["file"], stage / name / "1" / "model.plan"
            )
            (stage / name / "config.pbtxt").write_text(
                graph_config(name, graph, "tensorrt_plan", max_batch, "gpu", 1)
            )
            names.append(name)
    return names


def readme(bundle: Bundle, graph_models: List[str], args: argparse.Namespace) -> str:
    engines = bundle.engines.get("fp16")
    trt = (
        f"The `_plan` models are FP16 TensorRT engines built with TensorRT "
        f"{engines['tensorrt_version']} on {engines['gpu']}: they load only in a container "
        "with that TensorRT on a matching GPU.\n"
        if engines
        else "The bundle has no TensorRT engines (`make engine`), so there are no `_plan` models.\n"
    )
    return f"""# Triton model repository (written by `python -m export.triton`)

Bundle: `{bundle.root}` (preset `{bundle.manifest.get("preset")}`, variant
`{bundle.manifest.get("variant")}`). Models: `{DEBLUR}` (Python backend) and
{", ".join(f"`{n}`" for n in graph_models)}.

## `{DEBLUR}`: the one to serve

`{DEBLUR}/1/model.py` runs the project's runtime (`runtime.Deblurrer`, copied beside it
with the bundle) with its exact tiling. One request is one RGB image of any size:

| input | dtype | dims | |
|---|---|---|---|
| `image_uint8` / `_uint16` / `_float32` | UINT8 / UINT16 / FP32 | [H, W, 3] | exactly one; float in [0, 1] |
| `defocus_scale` | FP32 | [1] | optional, default 1.0: deblurring strength |
| `defocus_map` | FP32 | [H, W] | optional, replaces the estimate: blur-disc radius px / \
{bundle.map_radius_scale_px:g} |

Outputs: `deblurred_<dtype>` [H, W, 3] in the input's dtype, `defocus_map_used` [H, W] FP32.
Images larger than {args.max_side} px a side or {args.max_pixels} pixels are refused
(`max_side`, `max_pixels` in `config.pbtxt`). Instances: {args.instances} x KIND_{args.kind.upper()};
runtime backend `{args.backend}`, precision `{args.precision or "the runtime's default"}`.

The Python environment of the server needs `numpy` and `onnxruntime` (`openvino` for that
backend; `onnxruntime-gpu`, `tensorrt` and `cuda-python` for GPU instances). In NVIDIA's container:

```bash
docker run --rm --shm-size=1g -p 8000:8000 -p 8001:8001 -v $PWD/{args.out.name}:/models \\
  nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\
  bash -c "pip install numpy onnxruntime && tritonserver --model-repository=/models \\
           --model-control-mode=explicit --load-model={DEBLUR}"
```

Without Docker, the `tritonserver` binary inside the `nvidia-pytriton` wheel serves it
(Python backend only): `python -m export.triton_server --repo {args.out.name}`.

Query: `curl -s localhost:8000/v2/models/{DEBLUR}` shows the metadata; a request from
Python is in the project's README ("Serving").

## The graph models (`_onnx`, `_plan`)

The three graphs on Triton's own backends, for chaining them yourself (ensemble or BLS):
`estimate` (image -> defocus_map), `condition` (defocus_map -> cond_mean, pooled over the
whole image) and `restore` (image, defocus_map, cond_mean -> deblurred), NCHW float32 with
H and W multiples of {bundle.size_multiple}. Exact tiling needs `cond_mean` from the whole
image's map and tiles overlapping by the receptive field ({bundle.receptive_field}): the
`{DEBLUR}` model does that for you. Dynamic batching merges same-size requests (up to
max_batch_size). They need the ONNX Runtime and TensorRT backends of NVIDIA's container:
load them with `--load-model=<name>` or without `--model-control-mode=explicit`.
{trt}"""


def write_repository(args: argparse.Namespace) -> List[str]:
    """Write the repository to ``args.out``; returns the model names."""
    bundle = load_bundle(args.bundle)
    if "fp32" not in bundle.precisions():
        raise BundleError(f"{args.bundle}: the graph models need the FP32 ONNX graphs")
    out = Path(args.out)
    check_writable(out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise BundleError(f"{out} exists and is not empty: pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.triton-", dir=out.parent))
    try:
        write_deblur(stage, bundle, args)
        names = write_graphs(stage, bundle, args)
        (stage / "README.md").write_text(readme(bundle, names, args))
        _replace_folder(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return [DEBLUR] + names


def _replace_folder(stage: Path, out: Path) -> None:
    """Rename ``stage`` onto ``out``, the old ``out`` moved aside first and then removed."""
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    stage.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export.triton", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder (make export)")
    parser.add_argument("--out", type=Path, required=True, help="model repository to write")
    parser.add_argument("--force", action="store_true", help="replace an existing repository")
    parser.add_argument("--kind", choices=("cpu", "gpu"), default="cpu", help="instance_group kind")
    parser.add_argument("--instances", type=int, default=1, help="deblur instances (processes)")
    parser.add_argument(
        "--backend", choices=BACKENDS, default="auto", help="runtime backend of the deblur model"
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16"),
        help="runtime precision (default: the runtime's, runtime.backend.default_precision)",
    )
    parser.add_argument("--tile", type=int, help="runtime tile (default: the runtime's)")
    parser.add_argument("--tile-batch", type=int, help="tiles per graph call (default: the runtime's)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads per instance (default: all)")
    parser.add_argument("--max-side", type=int, default=16384, help="largest image side served")
    parser.add_argument("--max-pixels", type=int, default=50_000_000, help="largest image served")
    parser.add_argument("--max-batch", type=int, default=8, help="max_batch_size of the ONNX models")
    args = parser.parse_args(argv)
    for name in ("instances", "max_side", "max_pixels", "max_batch", "tile", "tile_batch", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        names = write_repository(args)
    except (DeblurError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
