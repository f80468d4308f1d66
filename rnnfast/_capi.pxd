# cython: language_level=3
"""What every extension module shares of the C core: status codes, the BLAS hook, and the one mapping of
a C status to an rnnfast exception (rnnfast.errors.from_status)."""

from libc.stdint cimport uintptr_t


cdef extern from "rnnfast.h" nogil:
    ctypedef enum rf_status:
        RF_OK
        RF_ERR_INVALID_ARG
        RF_ERR_NO_MEMORY
        RF_ERR_UNSUPPORTED
        RF_ERR_INTERNAL
    int RF_ERRLEN
    ctypedef void (*rf_fortran_sgemm)(const char *, const char *, const int *, const int *, const int *,
                                      const float *, const float *, const int *, const float *, const int *,
                                      const float *, float *, const int *) noexcept nogil
    void rf_blas_set_sgemm(rf_fortran_sgemm fn)


cdef inline object raise_status(rf_status st, const char *err):
    """Raise the rnnfast exception of a failed C call (err: its message, may be empty)."""
    from rnnfast.errors import from_status

    raise from_status(<int>st, err.decode("utf-8", "replace"))


cdef inline object install_blas():
    """Point this extension's copy of the C core at SciPy's sgemm (each extension has its own copy)."""
    from rnnfast import _blas

    rf_blas_set_sgemm(<rf_fortran_sgemm><uintptr_t>_blas.sgemm_address())
