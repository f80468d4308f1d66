"""Finds SciPy's BLAS at run time (nothing is linked at build time) and controls its threads."""

from __future__ import annotations

import ctypes
import functools
import glob
import os


def sgemm_address() -> int:
    """Address of the Fortran ``sgemm`` exported by ``scipy.linalg.cython_blas``."""
    from scipy.linalg import cython_blas

    capsule = cython_blas.__pyx_capi__["sgemm"]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype = ctypes.c_char_p
    get_name.argtypes = [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return int(get_pointer(capsule, get_name(capsule)))


@functools.cache
def _openblas_set_threads():
    """SciPy's bundled OpenBLAS ``set_num_threads``, or None (another BLAS, or not found)."""
    import scipy

    libdir = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
    for path in glob.glob(os.path.join(libdir, "libscipy_openblas*.so*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_set_num_threads", "openblas_set_num_threads"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int]
                fn.restype = None
                return fn
    return None


def set_blas_threads(n: int) -> bool:
    fn = _openblas_set_threads()
    if fn is None:
        return False
    fn(int(n))
    return True
