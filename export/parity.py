"""ONNX Runtime against PyTorch: the parity gate of the export."""

from contextlib import contextmanager
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import onnx
import onnxruntime as ort
import torch

from training.metrics import psnr

#: Below this PSNR (dB) of ONNX Runtime vs PyTorch on any size, the export fails.
PARITY_MIN_PSNR_DB = 60.0
#: (batch, height, width) in units of ``size_multiple``: odd multiples, a batch of 2
#: and a strongly non-square shape, so dynamic axes and padding paths are exercised.
PARITY_SIZES = ((2, 17, 23), (1, 32, 24), (1, 9, 41))
#: Threads of every measurement, torch and ONNX Runtime alike. The recorded figures
#: depend on how sums are split over threads (1 vs 2 threads: 154.40 vs 154.25 dB for
#: the default model's condition graph), so a fixed count makes a rerun of the export
#: on one machine reproduce ``manifest.json`` byte for byte.
THREADS = 1


@contextmanager
def fixed_threads() -> Iterator[None]:
    """Run torch on ``THREADS`` threads inside the block (restored after it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A CPU ONNX Runtime session of an in-memory model, on ``THREADS`` threads."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = THREADS
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def parity_inputs(
    graph: str, model, batch: int, height: int, width: int, rng: np.random.Generator
) -> Dict[str, np.ndarray]:
    """Random inputs of one graph: image in [0, 1], map in [0, 2], cond_mean from the map."""
    image = rng.random((batch, 3, height, width), dtype=np.float32)
    dmap = 2 * rng.random((batch, 1, height, width), dtype=np.float32)
    if graph == "estimate":
        return {"image": image}
    if graph == "condition":
        return {"defocus_map": dmap}
    feeds = {"image": image, "defocus_map": dmap}
    if model.uses_pooling:
        with torch.no_grad():
            feeds["cond_mean"] = model.condition_mean(torch.from_numpy(dmap)).numpy()
    return feeds


def check_parity(
    graph: str,
    spec: dict,
    onnx_model: onnx.ModelProto,
    model,
    sizes: Sequence[Tuple[int, int, int]] = PARITY_SIZES,
    seed: int = 0,
) -> dict:
    """Compare ONNX Runtime with the PyTorch module of one graph on several sizes.

    Args:
        graph: Graph name (``estimate``, ``condition``, ``restore``).
        spec: The graph's entry of ``export.graphs.graph_specs``.
        onnx_model: The exported graph.
        model: The ``DefocusDeblurNet`` it came from.
        sizes: (batch, h, w) in units of ``model.config.size_multiple``.
        seed: RNG seed of the random inputs.

    Returns:
        {"sizes": [[h, w], ...], "batches": [...], "max_abs_error": worst over sizes,
        "psnr_db": worst over sizes}.
    """
    m = model.config.size_multiple
    rng = np.random.default_rng(seed)
    sess = session(onnx_model)
    errors: List[float] = []
    psnrs: List[float] = []
    for batch, h, w in sizes:
        feeds = parity_inputs(graph, model, batch, h * m, w * m, rng)
        (got,) = sess.run(None, feeds)
        with torch.no_grad():
            want = spec["module"](*(torch.from_numpy(feeds[k]) for k in spec["inputs"])).numpy()
        if got.shape != want.shape:
            raise ValueError(f"{graph}: ONNX output shape {got.shape} != PyTorch {want.shape}")
        errors.append(float(np.abs(got - want).max()))
        psnrs.append(psnr(got, want, data_range=None))
    return {
        "sizes": [[h * m, w * m] for _, h, w in sizes],
        "batches": [b for b, _, _ in sizes],
        "max_abs_error": max(errors),
        "psnr_db": min(psnrs),
    }
