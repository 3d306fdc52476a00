"""Shared test set-up: thread limits, the tiny model bundles and the device / dtype fixtures.

The bundles come from ``export.graphs`` on a tiny ``DefocusDeblurNet`` whose
convolutions are re-initialised at full Kaiming scale, so that its output depends
strongly on context and pooled statistics: a tiling mistake shows as a large error.
Their manifests are written with export's own helpers (``model_facts``, ``io_spec``,
``onnx_file``), so they follow the schema that ``export.onnx`` writes.

``device`` (``cpu``, ``cuda``) and ``dtype`` (``float32``, ``float16``) parametrise the
architecture tests; ``array_side`` (``host``, ``cuda``) runs the runtime's tiling on
NumPy or CuPy arrays. The CUDA cases skip without a GPU, float16 runs on CUDA only.
"""

import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict

import cv2
import numpy as np
import pytest
import torch

# Without the estimator's full-resolution stage: the tiling tests' thresholds were set on this net.
TINY = dict(
    channels=8,
    num_blocks=1,
    dme_channels=8,
    dme_blocks=1,
    dme_dilated_blocks=1,
    cond_channels=8,
    dme_full_channels=0,
)


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    """Tiny tensors: one thread avoids OpenMP stalls while other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- tiny bundles ---------------------------------------------------------------


def build_bundle(folder: Path, variant: str = "sft_dec"):
    """Export a tiny model of ``variant`` (FP32 graphs only) into ``folder`` with its manifest.

    Returns:
        (bundle folder, the torch model in eval mode).
    """
    from torch import nn

    from common.hashing import sha256_file
    from export.bundle_writer import io_spec, onnx_file, write_manifest
    from export.graphs import export_graph, graph_specs
    from export.onnx import model_facts
    from training.archs import DefocusDeblurNet
    from training.presets import get_config

    torch.manual_seed(0)
    config = dataclasses.replace(get_config("small", variant), **TINY)
    model = DefocusDeblurNet(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="linear")
                nn.init.uniform_(module.bias, -0.1, 0.1)
        for name, module in model.named_modules():
            if name.endswith("gamma_c"):  # make the pooled statistics matter
                module[-1].weight.mul_(10.0)
    folder.mkdir(parents=True, exist_ok=True)
    graphs = {}
    for name, spec in graph_specs(model).items():
        path = folder / onnx_file(name, "fp32")
        proto = export_graph(spec, path)
        graphs[name] = {**io_spec(proto), "files": {"fp32": path.name}, "sha256": {"fp32": sha256_file(path)}}
    write_manifest(folder, {**model_facts(model, {}), "graphs": graphs, "engines": {}})
    return folder, model


def _smooth_texture(seed: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 8, width // 8, 3)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1)


@pytest.fixture
def texture() -> Callable[[int, int, int], np.ndarray]:
    """``texture(seed, height, width)``: a smooth random (H, W, 3) float32 image in [0, 1]."""
    return _smooth_texture


@pytest.fixture
def held_out(tmp_path):
    """A corpus folder with two held-out pictures (200 x 260), as ``make data`` leaves it."""
    for name, seed in (("pkg-a/one.png", 1), ("pkg-b/two.png", 2)):
        path = tmp_path / "holdout" / name
        path.parent.mkdir(parents=True)
        cv2.imwrite(str(path), np.rint(_smooth_texture(seed, 200, 260) * 255).astype(np.uint8))
    (tmp_path / "report.json").write_text("{}")
    return tmp_path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint folder of a tiny untrained ``small`` model (seed 0)."""
    from training.archs import DefocusDeblurNet
    from training.checkpoint import save_checkpoint
    from training.presets import NetConfig

    torch.manual_seed(0)
    config = NetConfig(
        preset="small", scale=2, dme_channels=4, dme_blocks=1, channels=8, num_blocks=1, cond_channels=4
    )
    folder = tmp_path_factory.mktemp("tiny")
    save_checkpoint(folder, DefocusDeblurNet(config))
    return folder


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """(bundle folder, torch model) of the pooling variant ``sft_dec``."""
    return build_bundle(tmp_path_factory.getbasetemp() / "runtime_bundles" / "sft_dec", "sft_dec")


@pytest.fixture(scope="session")
def concat_bundle(tmp_path_factory):
    """(bundle folder, torch model) of the non-pooling variant ``concat``."""
    return build_bundle(tmp_path_factory.getbasetemp() / "runtime_bundles" / "concat", "concat")


# --- devices and dtypes -----------------------------------------------------------


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> torch.device:
    """The torch device of an architecture test; ``cuda`` skips without a GPU."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU (torch.cuda.is_available() is False)")
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float16], ids=["float32", "float16"])
def dtype(request, device) -> torch.dtype:
    """The float type of an architecture test; float16 runs on CUDA only."""
    if request.param == torch.float16 and device.type != "cuda":
        pytest.skip("float16 runs on CUDA only")
    return request.param


@dataclasses.dataclass(frozen=True)
class ArraySide:
    """Where the runtime's arrays live in a test: NumPy on the host or CuPy on the GPU.

    The graphs themselves always run in ONNX Runtime on the CPU (``wrap``), so the
    CuPy case tests everything around the backend (tiles, blending, pooling) on the GPU.
    """

    name: str
    xp: Any

    def put(self, array: np.ndarray) -> Any:
        return array if self.xp is np else self.xp.asarray(array)

    def get(self, array: Any) -> np.ndarray:
        return array if self.xp is np else self.xp.asnumpy(array)

    def wrap(self, run: Callable[[str, Dict[str, Any]], Dict[str, Any]]):
        """A ``Backend.run``-like callable taking and returning arrays of this side."""
        if self.xp is np:
            return run
        return lambda graph, inputs: {
            k: self.put(v) for k, v in run(graph, {k: self.get(v) for k, v in inputs.items()}).items()
        }


@pytest.fixture(params=["host", "cuda"])
def array_side(request) -> ArraySide:
    """``host`` (NumPy) or ``cuda`` (CuPy; skips without CuPy or a GPU)."""
    if request.param == "host":
        return ArraySide("host", np)
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError:
        count = 0
    if count == 0:
        pytest.skip("no CUDA GPU visible to CuPy")
    return ArraySide("cuda", cupy)
