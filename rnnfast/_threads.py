"""Process-wide thread setting, like torch.set_num_threads: OpenMP teams of the C core + SciPy's BLAS."""

from __future__ import annotations

_n_threads = 0  # 0: the OpenMP default (OMP_NUM_THREADS or the number of cores)


def get() -> int:
    return _n_threads


def set_num_threads(n: int) -> None:
    """Use n threads for the C core's parallel regions and for SciPy's OpenBLAS (process-wide)."""
    global _n_threads
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n: expected an integer >= 1, got {n!r}")
    from . import _blas

    _blas.set_blas_threads(n)
    _n_threads = n


def get_num_threads() -> int:
    """Threads the C core uses (the OpenMP default when set_num_threads was not called)."""
    if _n_threads:
        return _n_threads
    from ._core import omp_max_threads

    return int(omp_max_threads())
