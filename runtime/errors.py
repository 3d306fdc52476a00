"""Exceptions of the runtime. Each carries a one-line message meant for the user."""


class DeblurError(RuntimeError):
    """Base class: the command-line tools print ``str(error)`` and exit non-zero."""


class BundleError(DeblurError):
    """A model path that is not a usable bundle, or an engine that does not fit this machine."""


class ImageError(DeblurError):
    """An image that cannot be read, decoded or written."""


class BackendError(DeblurError):
    """A backend that cannot be created or cannot run the requested shapes."""


class MissingDependency(BackendError):
    """TensorRT, cuda-python, a driver or a GPU is missing (one-line message)."""
