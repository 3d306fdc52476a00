"""Writing a deployment bundle: file names, ONNX metadata, manifest I/O, all-or-nothing writes.

The runtime reads bundles with ``runtime.bundle``; this is the export side's writer
(and the raw-manifest reader of the engine builder). No torch or TensorRT import.
"""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List

import onnx

from common.atomic import atomic_write
from common.jsonfile import read_versioned_json
from runtime.bundle import FORMAT
from runtime.errors import BundleError

MANIFEST = "manifest.json"


def onnx_file(graph: str, precision: str) -> str:
    """File name of a graph's ONNX: ``estimate.onnx`` (fp32) or ``estimate.fp16.onnx``."""
    return f"{graph}.onnx" if precision == "fp32" else f"{graph}.{precision}.onnx"


def engine_file(graph: str, precision: str = "fp16") -> str:
    """File name of a graph's TensorRT engine, e.g. ``estimate.fp16.engine``."""
    return f"{graph}.{precision}.engine"


def _dims(value_info: onnx.ValueInfoProto) -> List[Any]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in shape.dim]


def _dtype(value_info: onnx.ValueInfoProto) -> str:
    elem = value_info.type.tensor_type.elem_type
    return str(onnx.helper.tensor_dtype_to_np_dtype(elem))


def io_spec(model: onnx.ModelProto) -> Dict[str, List[dict]]:
    """Inputs and outputs of a graph as manifest entries.

    Returns:
        {"inputs": [{"name", "dtype", "shape"}], "outputs": [...]} where a shape
        lists ints for fixed dims and names ("batch", "height", ...) for dynamic ones.
    """

    def entries(values) -> List[dict]:
        return [{"name": v.name, "dtype": _dtype(v), "shape": _dims(v)} for v in values]

    return {"inputs": entries(model.graph.input), "outputs": entries(model.graph.output)}


def set_metadata(model: onnx.ModelProto, props: Dict[str, Any]) -> None:
    """Replace ``metadata_props`` with ``props``; non-string values are stored as JSON."""
    del model.metadata_props[:]
    onnx.helper.set_model_props(
        model, {k: v if isinstance(v, str) else json.dumps(v) for k, v in props.items()}
    )


def get_metadata(model: onnx.ModelProto) -> Dict[str, str]:
    """``metadata_props`` as a dict of strings."""
    return {p.key: p.value for p in model.metadata_props}


def read_manifest(bundle: Path) -> dict:
    """The bundle's manifest, checked for format.

    Raises:
        BundleError: no bundle, no manifest, corrupt JSON or another format.
    """
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: no such bundle folder (run `make export` first)")
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle}: no {MANIFEST} (run `make export` first)")
    return read_versioned_json(path, FORMAT, BundleError)


def write_manifest(bundle: Path, manifest: dict) -> None:
    """Write ``manifest.json`` atomically (temp file in the same folder, then rename)."""
    text = json.dumps(manifest, indent=2, allow_nan=False) + "\n"
    atomic_write(Path(bundle) / MANIFEST, lambda tmp: Path(tmp).write_text(text))


def _existing_parent(out: Path) -> Path:
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    return parent


def check_writable(out: Path) -> None:
    """Fail early, with one line, where ``out`` cannot become a writable folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BundleError(f"{out}: exists and is not a folder")
    parent = _existing_parent(out)
    if not parent.is_dir():
        raise BundleError(f"{out}: cannot create a folder under {parent} (a file)")
    for folder in (out, parent) if out.exists() else (parent,):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise BundleError(f"{out}: {folder} is not writable")


@contextmanager
def staged_bundle(out: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``out``; on success move its files into ``out``.

    The temp folder lies in ``out``'s nearest existing ancestor (its parent as a
    rule), so the final renames stay on one file system.

    Files are renamed in sorted order with ``manifest.json`` last, so a reader never
    finds a manifest that points at files not there yet. On any error the temp
    folder is removed and ``out`` is left as it was.
    """
    out = Path(out)
    check_writable(out)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=_existing_parent(out)))
    try:
        yield stage
        out.mkdir(parents=True, exist_ok=True)
        names = sorted(p.name for p in stage.iterdir())
        for name in sorted(names, key=lambda n: n == MANIFEST):
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
