"""Model bundle: ``manifest.json`` + ONNX graphs (+ TensorRT engines), as written by ``export``.

A bundle is a folder::

    manifest.json           format "defocus-deblur-bundle/1", see ``load_bundle``
    estimate.onnx           image (N,3,H,W)                         -> defocus_map (N,1,H,W)
    condition.onnx          defocus_map (N,1,H,W)                   -> cond_mean (N,Cc)  [pooling variants]
    restore.onnx            image, defocus_map[, cond_mean (N,Cc)]  -> deblurred (N,3,H,W)
    *.fp16.onnx, *.engine   optional other precisions / TensorRT engines

Nothing here imports torch, onnxruntime or TensorRT.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from common.hashing import sha256_file
from common.jsonfile import read_versioned_json
from runtime.errors import BundleError
from runtime.gpu import GpuInfo
from runtime.validate import DEFAULT_MAP_MAX, check_bundle_fields

FORMAT = "defocus-deblur-bundle/1"
GRAPH_NAMES = ("estimate", "condition", "restore")
PRECISIONS = ("fp32", "fp16")
#: Repository / package root; the default bundle lives in ``models/default`` below it.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUNDLE = PACKAGE_ROOT / "models" / "default"
#: The one "how to rebuild the engines" advice of every engine refusal.
REBUILD_HINT = "rebuild it with `make engine` or `python -m export.engine --bundle {dir} --force`"

_NUMPY_DTYPES = {"float32": "float32", "float16": "float16", "int64": "int64", "int32": "int32"}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype and shape (ints or symbolic names)."""

    name: str
    dtype: str
    shape: Tuple[Union[int, str], ...]


@dataclass(frozen=True)
class GraphEntry:
    """One graph of the bundle.

    Attributes:
        name: ``estimate``, ``condition`` or ``restore``.
        inputs, outputs: Tensor specs in graph order.
        files: precision -> ONNX path.
        sha256: precision -> hex digest of that file.
    """

    name: str
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]
    files: Dict[str, Path]
    sha256: Dict[str, str]

    def output_shape(self, output: str, input_shapes: Mapping[str, Sequence[int]]) -> Tuple[int, ...]:
        """Concrete shape of ``output`` given the concrete input shapes.

        Symbolic dimensions (``batch``, ``height``, ``width``) take the value they
        have in the inputs, so e.g. ``deblurred`` of a (4,3,512,512) image is (4,3,512,512).
        """
        sizes: Dict[str, int] = {}
        for spec in self.inputs:
            if spec.name in input_shapes:
                for dim, value in zip(spec.shape, input_shapes[spec.name]):
                    if isinstance(dim, str):
                        sizes[dim] = int(value)
        found = next((o for o in self.outputs if o.name == output), None)
        if found is None:
            raise BundleError(f"graph {self.name!r} has no output {output!r}")
        try:
            return tuple(d if isinstance(d, int) else sizes[d] for d in found.shape)
        except KeyError as err:
            raise BundleError(
                f"output {output!r} of {self.name!r}: dimension {err} is not set by the inputs"
            ) from None


@dataclass(frozen=True)
class Bundle:
    """A loaded and verified model bundle.

    Attributes:
        root: The bundle folder.
        manifest: The raw manifest dictionary.
        graphs: Graph name -> ``GraphEntry``.
        size_multiple: H and W of every graph input must be multiples of this.
        map_radius_scale_px: Map value 1.0 means a blur disc of this radius (px).
        receptive_field: ``estimate``, ``restore`` (and ``total``) in pixels.
        map_max: The trained map range is [0, map_max] map units (manifest ``map_max``;
            ``validate.DEFAULT_MAP_MAX`` = 1.0 where it has none).
        engines: Precision -> engine entry (see ``check_engine_entry``).
        hint_backend, hint_precision: Set when ``--model`` named one .onnx / .engine file.
    """

    root: Path
    manifest: dict
    graphs: Dict[str, GraphEntry]
    size_multiple: int
    map_radius_scale_px: float
    receptive_field: Dict[str, int]
    map_max: float = DEFAULT_MAP_MAX
    engines: Dict[str, dict] = field(default_factory=dict)
    hint_backend: Optional[str] = None
    hint_precision: Optional[str] = None

    @property
    def uses_pooling(self) -> bool:
        """True where ``restore`` takes the whole image's ``cond_mean``."""
        return "condition" in self.graphs

    def precisions(self) -> List[str]:
        """Precisions for which every graph has an ONNX file."""
        return [p for p in PRECISIONS if all(p in g.files for g in self.graphs.values())]

    def onnx_path(self, graph: str, precision: str) -> Path:
        entry = self.graphs[graph]
        if precision not in entry.files:
            raise BundleError(
                f"bundle {self.root} has no {precision} ONNX for {graph!r} "
                f"(has: {', '.join(sorted(entry.files)) or 'none'})"
            )
        return entry.files[precision]

    def graph_sha256(self, precision: str) -> Dict[str, str]:
        """Graph name -> sha256 of its ONNX file at ``precision``."""
        return {name: g.sha256[precision] for name, g in self.graphs.items() if precision in g.sha256}


def _manifest_path(path: Path) -> Tuple[Path, Optional[Path]]:
    """(manifest.json, the single model file named by the user or None)."""
    if path.is_dir():
        return path / "manifest.json", None
    if path.suffix == ".json":
        return path, None
    if path.suffix in (".onnx", ".engine"):
        return path.parent / "manifest.json", path
    raise BundleError(
        f"{path} is not a model: expected a bundle folder, its manifest.json, "
        "an .onnx graph or an .engine file of a bundle"
    )


def _read_manifest(manifest_path: Path) -> dict:
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path.parent} is not a model bundle: no manifest.json in it")
    return read_versioned_json(manifest_path, FORMAT, BundleError)


def _tensor_specs(graph: str, items: list) -> Tuple[TensorSpec, ...]:
    try:
        return tuple(TensorSpec(t["name"], _NUMPY_DTYPES[t["dtype"]], tuple(t["shape"])) for t in items)
    except (KeyError, TypeError) as err:
        raise BundleError(f"manifest: bad tensor entry in graph {graph!r} ({err!r})") from None


def _graph_entry(root: Path, name: str, data: dict, verify: bool) -> GraphEntry:
    try:
        files = {p: root / f for p, f in data["files"].items()}
        digests = dict(data["sha256"])
        inputs, outputs = _tensor_specs(name, data["inputs"]), _tensor_specs(name, data["outputs"])
    except (KeyError, TypeError, AttributeError) as err:
        raise BundleError(f"manifest: graph {name!r} lacks {err}") from None
    for precision, path in files.items():
        if not path.is_file():
            raise BundleError(f"bundle {root}: {path.name} ({name}, {precision}) is missing")
        if precision not in digests:
            raise BundleError(f"manifest: no sha256 for {path.name}")
        if verify and sha256_file(path) != digests[precision]:
            raise BundleError(
                f"bundle {root}: {path.name} does not match its sha256 in "
                "manifest.json (corrupt or replaced file; re-export the bundle)"
            )
    return GraphEntry(name, inputs, outputs, files, digests)


def _hints(bundle_graphs: Dict[str, GraphEntry], engines: Dict[str, dict], named: Path) -> Tuple[str, str]:
    """Backend and precision implied by one named .onnx / .engine file."""
    if named.suffix == ".onnx":
        for entry in bundle_graphs.values():
            for precision, path in entry.files.items():
                if path.name == named.name:
                    return "onnxruntime", precision
    else:
        for precision, engine in engines.items():
            if any(g.get("file") == named.name for g in engine.get("graphs", {}).values()):
                return "tensorrt", precision
    raise BundleError(f"{named} is not one of the graphs listed in {named.parent / 'manifest.json'}")


def load_bundle(path: Union[str, Path, None] = None, verify: bool = True) -> Bundle:
    """Read and check a bundle.

    Args:
        path: A bundle folder, its ``manifest.json``, one of its ``.onnx`` graphs
            or ``.engine`` files. Default: ``models/default`` of the package root.
        verify: Check the sha256 of every ONNX file. Default: True.

    Returns:
        The ``Bundle``.

    Raises:
        BundleError: Not a bundle, bad JSON, unknown format, missing files or a
            sha256 mismatch (one-line message).
    """
    if path is None:
        if not (DEFAULT_BUNDLE / "manifest.json").is_file():
            raise BundleError(
                f"no default model in {DEFAULT_BUNDLE}: pass --model BUNDLE, or "
                "create it with `make export` (from a checkpoint in models/default)"
            )
        path = DEFAULT_BUNDLE
    path = Path(path)
    if not path.exists():
        raise BundleError(f"model {path} does not exist")
    manifest_path, named = _manifest_path(path)
    data = _read_manifest(manifest_path)
    root = manifest_path.parent
    graphs_data = data.get("graphs")
    if not isinstance(graphs_data, dict) or not {"estimate", "restore"} <= set(graphs_data):
        raise BundleError(f"{manifest_path}: needs graphs 'estimate' and 'restore'")
    unknown = set(graphs_data) - set(GRAPH_NAMES)
    if unknown:
        raise BundleError(f"{manifest_path}: unknown graphs {sorted(unknown)}")
    graphs = {n: _graph_entry(root, n, graphs_data[n], verify) for n in GRAPH_NAMES if n in graphs_data}
    engines = data.get("engines") or {}
    hint_backend, hint_precision = _hints(graphs, engines, named) if named else (None, None)
    try:
        size_multiple = int(data["size_multiple"])
        radius_scale_px = float(data["map_radius_scale_px"])
        receptive_field = {k: int(v) for k, v in data["receptive_field"].items()}
        map_max = float(data.get("map_max", DEFAULT_MAP_MAX))
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as err:
        raise BundleError(f"{manifest_path}: missing or bad key {err}") from None
    check_bundle_fields(size_multiple, radius_scale_px, receptive_field, map_max, str(manifest_path))
    return Bundle(
        root=root,
        manifest=data,
        graphs=graphs,
        size_multiple=size_multiple,
        map_radius_scale_px=radius_scale_px,
        receptive_field=receptive_field,
        map_max=map_max,
        engines=engines,
        hint_backend=hint_backend,
        hint_precision=hint_precision,
    )


def _same_version(built: str, installed: str) -> bool:
    """Engines only load in the TensorRT that built them: compare as many components
    as the manifest records ('10.13.0' matches '10.13.0.35', '10.13.0.35' must be exact)."""
    recorded = re.findall(r"\d+", built)
    return bool(recorded) and recorded == re.findall(r"\d+", installed)[: len(recorded)]


def _gpu_mismatch(entry: dict, gpu: GpuInfo) -> Optional[str]:
    """Why this GPU cannot run the engine, honouring its ``hardware_compatibility`` level."""
    gpu_name, compute_capability = gpu.name, gpu.compute_capability
    level = entry.get("hardware_compatibility", "none")
    built_cc, built_gpu = str(entry.get("compute_capability")), entry.get("gpu")
    if level == "ampere_plus":
        if float(compute_capability) < 8.0:
            return f"engine needs an Ampere or newer GPU, this is {gpu_name} ({compute_capability})"
        return None
    if built_cc != str(compute_capability):
        return (
            f"engine built for compute capability {built_cc} ({built_gpu}), this GPU is "
            f"{compute_capability} ({gpu_name})"
        )
    if level != "same_compute_capability" and built_gpu != gpu_name:
        return f"engine built on {built_gpu}, this GPU is {gpu_name}"
    return None


def check_engine_entry(
    entry: dict, graph_sha256: Dict[str, str], trt_version: str, gpu: GpuInfo, bundle_dir: str = "DIR"
) -> None:
    """Refuse a TensorRT engine entry that is stale or foreign to this machine.

    The engine-fit check of the runtime and of ``export.verify``; ``check_engines``
    adds the engine files themselves. The TensorRT version matches on as many
    components as the manifest records, the GPU per ``hardware_compatibility``.

    Args:
        entry: ``manifest["engines"][precision]``: ``tensorrt_version``, ``gpu``,
            ``compute_capability``, optional ``hardware_compatibility`` (``none``,
            ``same_compute_capability``, ``ampere_plus``) and ``graphs``
            {name: {file, onnx_sha256, engine_sha256}}.
        graph_sha256: Graph name -> sha256 of the ONNX file the engine must come from.
        trt_version: Installed TensorRT version (``tensorrt.__version__``).
        gpu: This GPU (``runtime.gpu.cuda_gpus``).
        bundle_dir: Shown in the rebuild command of the error message.

    Raises:
        BundleError: Naming the mismatch and how to rebuild the engines.
    """
    hint = REBUILD_HINT.format(dir=bundle_dir)
    built = str(entry.get("tensorrt_version", "?"))
    if not _same_version(built, trt_version):
        raise BundleError(f"engine built with TensorRT {built}, installed is {trt_version}: {hint}")
    reason = _gpu_mismatch(entry, gpu)
    if reason:
        raise BundleError(f"{reason}: {hint}")
    engine_graphs = entry.get("graphs", {})
    for name, digest in graph_sha256.items():
        if name not in engine_graphs:
            raise BundleError(f"engine set has no {name!r} engine: {hint}")
        if engine_graphs[name].get("onnx_sha256") != digest:
            raise BundleError(
                f"{engine_graphs[name].get('file', name)} is stale: its ONNX graph "
                f"changed since it was built: {hint}"
            )


def check_engines(bundle: Bundle, precision: str, trt_version: str, gpu: GpuInfo) -> Dict[str, Path]:
    """Graph name -> engine file of ``bundle``'s ``precision`` engines, once they fit here.

    ``check_engine_entry``, then every engine file must exist and match the
    ``engine_sha256`` the manifest records.

    Raises:
        BundleError: No such engines, a stale or foreign entry, a missing or altered
            file; the message ends with ``REBUILD_HINT``.
    """
    hint = REBUILD_HINT.format(dir=bundle.root)
    entry = bundle.engines.get(precision)
    if entry is None:
        raise BundleError(
            f"bundle {bundle.root} has no {precision} TensorRT engine "
            f"(has: {', '.join(bundle.engines) or 'none'}): {hint}"
        )
    check_engine_entry(entry, bundle.graph_sha256(precision), trt_version, gpu, str(bundle.root))
    paths = {}
    for name in bundle.graphs:
        info = entry["graphs"][name]
        path = paths[name] = bundle.root / info["file"]
        if not path.is_file():
            raise BundleError(f"{path} is missing: {hint}")
        if "engine_sha256" in info and sha256_file(path) != info["engine_sha256"]:
            raise BundleError(f"{path.name} does not match its sha256 in manifest.json: {hint}")
    return paths


def check_profile(profile: dict, batch: int, height: int, width: int) -> None:
    """Raise ``BundleError`` when (batch, height, width) lies outside an engine's profile.

    Args:
        profile: ``{"min": [N, H, W], "opt": [...], "max": [...]}``.
    """
    lo, hi = profile["min"], profile["max"]
    for label, value, low, high in zip(("batch", "height", "width"), (batch, height, width), lo, hi):
        if not low <= value <= high:
            raise BundleError(
                f"{label} {value} is outside the engine profile [{low}, {high}]; "
                "use --tile / --tile-batch inside it or rebuild the engine "
                "with a wider profile"
            )
