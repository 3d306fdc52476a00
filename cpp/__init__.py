"""The C++ runtime (see cpp/README.md); ``cpp.capi`` is its Python (ctypes) binding."""
