"""Triton Python-backend model: ``runtime.Deblurrer`` behind Triton's inference API.

``export.triton`` copies this file to ``<repo>/deblur/1/model.py``, with the
``runtime`` and ``common`` packages and the model bundle beside it, so the model
runs the project's runtime with its exact tiling on whatever backend the bundle
and the machine allow (OpenVINO, ONNX Runtime, TensorRT engines). Only Triton imports it.

One request is one image (``max_batch_size: 0``), of any size:

    inputs   exactly one of image_uint8 / image_uint16 / image_float32  (H, W, 3) RGB
             defocus_scale (1,) float32, optional (default 1.0)
             defocus_map (H, W) float32, optional, in the bundle's map units
    outputs  deblurred_<dtype> (H, W, 3) in the input's dtype
             defocus_map_used (H, W) float32

A bad request gets an error response with one ``error:`` line (INVALID_ARG, HTTP 400),
a failure of the backend one with INTERNAL (HTTP 500); the model keeps serving.
Settings come from the ``parameters`` of ``config.pbtxt`` (see ``export.triton``).
"""

import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the runtime and common packages copied beside this file

from runtime import BackendError, DeblurError, Deblurrer  # noqa: E402

IMAGE_INPUTS = ("image_uint8", "image_uint16", "image_float32")
MAP_OUTPUT = "defocus_map_used"


class RequestError(DeblurError):
    """A request this model refuses (one-line message)."""


def _optional_int(value: str) -> Optional[int]:
    return int(value) if value else None


# Tensors cross the stub by DLPack both ways: the stub of nvidia-pytriton 0.7.0 is built
# for NumPy 1's array layout, and under NumPy 2 its ``as_numpy()`` repeats the first element
# and ``pb_utils.Tensor(name, ndarray)`` sends 0 bytes. DLPack carries dtype, shape and
# strides itself.


def _input(request, name: str) -> Optional[np.ndarray]:
    """The named input as a NumPy view of the request's memory, or None where absent."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else np.from_dlpack(tensor)


def _error(err: DeblurError, code):
    """An error response of one ``error:`` line."""
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"error: {err}", code))


def _output(name: str, array: np.ndarray):
    return pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(array))


def _quiet_dlpack_hook(default):
    """``sys.unraisablehook`` that drops one harmless message per output tensor.

    The stub renames the DLPack capsule it consumes to a name NumPy's capsule
    destructor does not know; the destructor then reports this ValueError and leaves
    the tensor to the stub (the load test's server RSS stays flat over requests).
    """

    def hook(unraisable):
        if not (
            isinstance(unraisable.exc_value, ValueError)
            and unraisable.object is None
            and str(unraisable.exc_value) == "PyCapsule_GetPointer called with incorrect name"
        ):
            default(unraisable)

    return hook


class TritonPythonModel:
    """One ``Deblurrer`` per model instance (each instance is its own process)."""

    def initialize(self, args: Dict[str, str]) -> None:
        sys.unraisablehook = _quiet_dlpack_hook(sys.unraisablehook)
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        gpu = args["model_instance_kind"] == "GPU"
        if gpu:
            # Each instance is a process of its own: pin it to its GPU before any CUDA use.
            os.environ["CUDA_VISIBLE_DEVICES"] = args["model_instance_device_id"]
        self.max_side = int(params["max_side"])
        self.max_pixels = int(params["max_pixels"])
        self.deblurrer = Deblurrer(
            HERE / "bundle",
            backend=params["backend"],
            device="cuda" if gpu else "cpu",
            precision=params["precision"] or None,
            tile=_optional_int(params["tile"]),
            tile_batch=_optional_int(params["tile_batch"]),
            threads=_optional_int(params["threads"]),
        )
        pb_utils.Logger.log_info(
            f"deblur: runtime {Path(str(sys.modules['runtime'].__file__)).parent}, "
            f"{self.deblurrer.describe()}, tile {self.deblurrer.tile}"
        )

    def execute(self, requests: List) -> List:
        return [self._respond(request) for request in requests]

    def _respond(self, request):
        try:
            image, scale, defocus_map = self._inputs(request)
            sharp, used = self.deblurrer.run(image, defocus_scale=scale, defocus_map=defocus_map)
        except BackendError as err:
            # The backend failed (CUDA, engine, ONNX Runtime): the server's error, HTTP 500 / gRPC INTERNAL.
            return _error(err, pb_utils.TritonError.INTERNAL)
        except DeblurError as err:
            # Bad input (shape, size, map, scale): the client's error, HTTP 400 / gRPC INVALID_ARGUMENT.
            return _error(err, pb_utils.TritonError.INVALID_ARG)
        return pb_utils.InferenceResponse(
            output_tensors=[_output(f"deblurred_{sharp.dtype}", sharp), _output(MAP_OUTPUT, used)]
        )

    def _inputs(self, request) -> Tuple[np.ndarray, float, Optional[np.ndarray]]:
        given = [(name, a) for name in IMAGE_INPUTS if (a := _input(request, name)) is not None]
        if len(given) != 1:
            raise RequestError(
                f"send exactly one of {', '.join(IMAGE_INPUTS)}, got "
                f"{', '.join(n for n, _ in given) or 'none'}"
            )
        image = given[0][1]
        self._check_size(image.shape)
        scale_array = _input(request, "defocus_scale")
        scale = 1.0 if scale_array is None else float(scale_array.reshape(-1)[0])
        return image, scale, _input(request, "defocus_map")

    def _check_size(self, shape: Tuple[int, ...]) -> None:
        height, width = shape[:2]
        if max(height, width) > self.max_side or height * width > self.max_pixels:
            raise RequestError(
                f"image {height}x{width} exceeds this server's limits: sides up to "
                f"{self.max_side} px, {self.max_pixels} pixels in all (parameters "
                "max_side and max_pixels of config.pbtxt)"
            )

    def finalize(self) -> None:
        self.deblurrer.close()
