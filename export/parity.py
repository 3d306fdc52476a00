"""ONNX Runtime against PyTorch: the parity gate of the export."""
import math
from typing import Dict, List, Sequence, Tuple

import numpy as np
import onnx
import onnxruntime as ort
import torch
from skimage.metrics import peak_signal_noise_ratio

#: Below this PSNR (dB) of ONNX Runtime vs PyTorch on any size, the export fails.
PARITY_MIN_PSNR_DB = 60.0
#: (batch, height, width) in units of ``size_multiple``: odd multiples, a batch of 2
#: and a strongly non-square shape, so dynamic axes and padding paths are exercised.
PARITY_SIZES = ((2, 17, 23), (1, 32, 24), (1, 9, 41))


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB with the reference's value range as peak; ``inf`` when identical.

    The peak is ``max - min`` of the reference (at least 1e-12): 1 for images that
    span [0, 1], the map's own range for a defocus map or condition vector.
    """
    reference = np.asarray(reference, np.float64)
    test = np.asarray(test, np.float64)
    if np.array_equal(reference, test):
        return math.inf
    data_range = max(float(reference.max() - reference.min()), 1e-12)
    return float(peak_signal_noise_ratio(reference, test, data_range=data_range))


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A CPU ONNX Runtime session of an in-memory model."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def parity_inputs(graph: str, model, batch: int, height: int, width: int,
                  rng: np.random.Generator) -> Dict[str, np.ndarray]:
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


def check_parity(graph: str, spec: dict, onnx_model: onnx.ModelProto, model,
                 sizes: Sequence[Tuple[int, int, int]] = PARITY_SIZES,
                 seed: int = 0) -> dict:
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
        psnrs.append(psnr(want, got))
    return {"sizes": [[h * m, w * m] for _, h, w in sizes], "batches": [b for b, _, _ in sizes],
            "max_abs_error": max(errors), "psnr_db": min(psnrs)}
