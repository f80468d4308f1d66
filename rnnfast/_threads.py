"""Process-wide thread setting, like torch.set_num_threads: OpenMP teams of the C core + SciPy's BLAS."""

from __future__ import annotations

import os

_n_threads = 0  # 0: the OpenMP default (OMP_NUM_THREADS or the number of cores)
_forked = False  # in a child created by fork(): GNU OpenMP's thread pool did not survive it


def get() -> int:
    return 1 if _forked else _n_threads


def resolve(n_threads: int | None = None) -> int:
    """Threads for one call into the C core: an explicit n_threads, else the process setting (0: the OpenMP
    default). Always 1 in a child created by fork(), explicit or not (see _after_fork_in_child)."""
    if _forked:
        return 1
    return _n_threads if n_threads is None else int(n_threads)


def _after_fork_in_child() -> None:
    # libgomp's worker threads are not copied by fork(); a parallel region in the child would wait for
    # them forever. The child therefore runs the C core on its own thread (SciPy's OpenBLAS re-creates
    # its threads by itself). Use the "spawn" or "forkserver" start methods to get threads in workers.
    global _forked
    _forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def set_num_threads(n: int) -> None:
    """Use n threads for the C core's parallel regions and for SciPy's OpenBLAS (process-wide).

    In a child process created by fork() the C core stays on one thread whatever n is: GNU OpenMP's
    thread pool does not survive fork (start worker processes with "spawn" to use threads there)."""
    global _n_threads
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n: expected an integer >= 1, got {n!r}")
    from . import _blas

    _blas.set_blas_threads(n)
    _n_threads = n


def get_num_threads() -> int:
    """Threads the C core uses (the OpenMP default when set_num_threads was not called; 1 in a process
    created by fork())."""
    if _forked or _n_threads:
        return get()
    from ._core import omp_max_threads

    return int(omp_max_threads())
