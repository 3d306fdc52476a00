"""Exceptions of the runtime. Each carries a one-line message meant for the user."""


class DeblurError(RuntimeError):
    """Base class: the command-line tools print ``str(error)`` and exit non-zero."""


class BundleError(DeblurError):
    """A model path that is not a usable bundle, or an engine that does not fit this machine."""


class ImageError(DeblurError):
    """An input the caller gave that cannot be used: an image that cannot be read, decoded
    or written, a bad shape, dtype or sample range, a map that does not fit, a bad scale.

    Services answer it as the client's error (HTTP 400); ``BackendError`` is the server's."""


class BackendError(DeblurError):
    """A backend that cannot be created or cannot run the requested shapes."""


class MissingDependency(BackendError):
    """TensorRT, cuda-python, a driver or a GPU is missing (one-line message)."""
