"""Finds libuhmm_framework_alloc.so for the framework samples (torch_uhmm.py, cupy_uhmm.py).

Order: $UHMM_FRAMEWORK_ALLOC; the build tree next to this file (build/gpu, build/release); the
installed library (the loader's path). See docs/CUDA.md, "Frameworks".
"""
import ctypes
import os

_HERE = os.path.dirname(os.path.abspath(__file__))
_NAME = "libuhmm_framework_alloc.so"


def library_path():
    env = os.environ.get("UHMM_FRAMEWORK_ALLOC")
    if env:
        return env
    for build in ("gpu", "release"):
        p = os.path.join(_HERE, "..", "..", "build", build, "lib", _NAME)
        if os.path.exists(p):
            return os.path.normpath(p)
    return _NAME  # the loader's search path


def load():
    """The library through ctypes, with its entry points typed."""
    lib = ctypes.CDLL(library_path())
    lib.uhmm_fw_malloc.restype = ctypes.c_void_p
    lib.uhmm_fw_malloc.argtypes = [ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
    lib.uhmm_torch_malloc.restype = ctypes.c_void_p
    lib.uhmm_torch_malloc.argtypes = [ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
    lib.uhmm_fw_free.restype = None
    lib.uhmm_fw_free.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int, ctypes.c_void_p]
    lib.uhmm_fw_status.restype = ctypes.c_char_p
    lib.uhmm_fw_status.argtypes = []
    return lib


def status(lib):
    return lib.uhmm_fw_status().decode()
