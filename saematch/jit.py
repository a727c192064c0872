"""The compiler of saematch's kernels: numba's ``njit`` with the GIL released, so that the
compiled sparse solve of one pair runs beside another pair's GEMM passes in a second thread
(:func:`saematch.match_chain`)."""
from __future__ import annotations

import functools

import numba
import numpy as np
from numba import prange

__all__ = ["njit", "prange", "threadsafe"]

njit = functools.partial(numba.njit, nogil=True)


@njit(parallel=True, cache=True)
def _fill(x):
    for i in prange(x.shape[0]):
        x[i] = i


def threadsafe() -> bool:
    """Whether two threads may run parallel kernels at once: numba's ``omp`` and ``tbb`` layers
    allow it, its fallback ``workqueue`` aborts the process (the layer is chosen at the first
    parallel kernel, so one runs here)."""
    _fill(np.empty(2))
    return numba.threading_layer() != "workqueue"
