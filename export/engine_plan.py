"""Everything of the engine build that needs neither TensorRT nor a GPU.

Optimisation profiles from the runtime's tile shape, the engine cache key (when an
engine is rebuilt) and the manifest's ``engines`` section. No torch import. Whether
an engine fits this machine is the runtime's one check, ``runtime.bundle.check_engines``;
TensorRT and the GPUs are found by ``runtime.gpu``.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from common.hashing import sha256_file
from export.bundle_writer import engine_file
from runtime.gpu import GpuInfo

Shape = Tuple[int, ...]
HARDWARE_COMPATIBILITY = ("none", "ampere_plus", "same_compute_capability")
#: How to install TensorRT, cuda-python and onnxruntime-gpu (the README quotes it).
GPU_INSTALL = "pip uninstall -y onnxruntime && pip install -e '.[gpu]'"


@dataclass(frozen=True)
class Profile:
    """(batch, height, width) triples of one TensorRT optimisation profile."""

    min: Shape
    opt: Shape
    max: Shape

    def to_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def compute_profile(
    tile: int, batch: int, max_batch: int, min_size: int, max_size: int, size_multiple: int
) -> Profile:
    """The profile that covers the runtime's tiles.

    Args:
        tile: Side of the runtime's square tiles (the ``opt`` height and width).
        batch: Tiles per call the engine is tuned for (``opt`` batch).
        max_batch: Largest batch the engine accepts.
        min_size: Smallest side (a small image is padded up to ``size_multiple`` only).
        max_size: Largest side (whole images up to this size run untiled).
        size_multiple: Every side must be a multiple of it.

    Returns:
        Profile with min (1, min_size, min_size), opt (batch, tile, tile) and
        max (max_batch, max_size, max_size).

    Raises:
        ValueError: one line naming the first bad argument.
    """
    if size_multiple < 1:
        raise ValueError(f"size_multiple must be >= 1, got {size_multiple}")
    for name, value in (("tile", tile), ("min-size", min_size), ("max-size", max_size)):
        if value < size_multiple or value % size_multiple:
            raise ValueError(
                f"--{name} {value} must be a positive multiple of the model's size multiple {size_multiple}"
            )
    if not min_size <= tile <= max_size:
        raise ValueError(f"need --min-size <= --tile <= --max-size, got {min_size}, {tile}, {max_size}")
    if not 1 <= batch <= max_batch:
        raise ValueError(f"need 1 <= --batch <= --max-batch, got {batch}, {max_batch}")
    return Profile((1, min_size, min_size), (batch, tile, tile), (max_batch, max_size, max_size))


def _resolve(dims: Sequence, triple: Shape) -> Shape:
    names = {"batch": triple[0], "height": triple[1], "width": triple[2]}
    return tuple(names[d] if isinstance(d, str) else int(d) for d in dims)


def input_shapes(inputs: List[dict], profile: Profile) -> Dict[str, Tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shape of every graph input under ``profile``.

    Args:
        inputs: The manifest's ``graphs[name]["inputs"]``; dynamic dims are named
            ``batch``, ``height`` and ``width`` (``cond_mean`` (batch, Cc) follows batch).
        profile: From ``compute_profile``.
    """
    return {
        i["name"]: (
            _resolve(i["shape"], profile.min),
            _resolve(i["shape"], profile.opt),
            _resolve(i["shape"], profile.max),
        )
        for i in inputs
    }


def engine_key(
    onnx_sha256: str, tensorrt_version: str, gpu: GpuInfo, profile: Profile, hardware_compatibility: str
) -> dict:
    """What an engine depends on; an engine is reused only where all of it matches."""
    return {
        "onnx_sha256": onnx_sha256,
        "tensorrt_version": tensorrt_version,
        "gpu": gpu.name,
        "compute_capability": gpu.compute_capability,
        "profile": profile.to_dict(),
        "hardware_compatibility": hardware_compatibility,
    }


def recorded_key(manifest: dict, graph: str) -> Optional[dict]:
    """The key the manifest records for ``graph``'s FP16 engine, or None."""
    engines = manifest.get("engines", {}).get("fp16")
    if not engines or graph not in engines.get("graphs", {}):
        return None
    entry = engines["graphs"][graph]
    return {
        "onnx_sha256": entry["onnx_sha256"],
        "tensorrt_version": engines["tensorrt_version"],
        "gpu": engines["gpu"],
        "compute_capability": engines["compute_capability"],
        "profile": engines["profile"],
        "hardware_compatibility": engines["hardware_compatibility"],
    }


def reusable(manifest: dict, bundle: Path, graph: str, key: dict) -> bool:
    """True where ``graph``'s engine exists, is intact and was built under ``key``."""
    path = Path(bundle) / engine_file(graph)
    if recorded_key(manifest, graph) != key or not path.is_file():
        return False
    return sha256_file(path) == manifest["engines"]["fp16"]["graphs"][graph]["engine_sha256"]


def engines_section(key: dict, graphs: Dict[str, dict]) -> dict:
    """The manifest's ``engines["fp16"]`` for engines built under one key.

    Args:
        key: From ``engine_key`` (its ``onnx_sha256`` is per graph, in ``graphs``).
        graphs: Graph name -> {"file", "onnx_sha256", "engine_sha256", ...}.
    """
    shared = {k: v for k, v in key.items() if k != "onnx_sha256"}
    return {**shared, "graphs": graphs}


def tensorrt_missing_message(bundle: Path) -> str:
    return (
        f"tensorrt is not installed: {GPU_INSTALL} (needs an NVIDIA GPU and driver); "
        f"the ONNX bundle in {bundle} runs with onnxruntime meanwhile"
    )
