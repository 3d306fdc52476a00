"""Defocus deblurring runtime: OpenVINO / ONNX Runtime / TensorRT execution of an exported bundle.

Never imports torch. Embedding::

    from runtime import Deblurrer

    deblurrer = Deblurrer()                        # models/default, auto backend, CPU
    sharp, defocus_map = deblurrer.run(image)      # (H, W, 3) uint8/uint16/float32 RGB

    # Stronger deblurring, or a map of your own (blur-disc radius px / 10):
    sharp, _ = deblurrer.run(image, defocus_scale=1.5)
    sharp, _ = deblurrer.run(image, defocus_map=my_map)

    # Better output at 2, 4 or 8 times the cost: average flipped / transposed passes.
    best = Deblurrer(self_ensemble=8)

    # GPU frames stay on the GPU (CuPy arrays, torch CUDA tensors via DLPack / CAI):
    gpu = Deblurrer(device="cuda")                 # TensorRT if an engine fits, else ORT-CUDA
    sharp_cp, map_cp = gpu.run(frame_cuda)         # CuPy arrays; torch.from_dlpack(sharp_cp)

``Deblurrer(model=None, backend="auto", device="cpu", precision=None, tile=None,
overlap=None, tile_batch=None, threads=None, cuda_graphs=False, self_ensemble=1).run(image,
defocus_scale=1.0, defocus_map=None) -> (deblurred, defocus_map)``: the output has the
input's dtype (float32 clipped to [0, 1]); the map is (H, W) float32 as used (the
self-ensemble's combined map).
Errors are ``runtime.errors.DeblurError`` subclasses with one-line messages; the input rules
(samples, maps, scales, tiling, bundle fields) are those of ``runtime.validate``.

Command lines: ``python -m runtime.infer`` (files) and ``python -m runtime.stream``
(raw frames on stdin / stdout); see ``runtime/README.md``.
"""

from runtime.bundle import Bundle, load_bundle
from runtime.deblurrer import Deblurrer
from runtime.errors import BackendError, BundleError, DeblurError, ImageError

__all__ = ["BackendError", "Bundle", "BundleError", "DeblurError", "Deblurrer", "ImageError", "load_bundle"]
