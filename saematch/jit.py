"""The compiler of saematch's kernels: numba's ``njit`` with the GIL released, so that the
compiled sparse solve of one pair runs beside another pair's GEMM passes in a second thread
(:func:`saematch.match_chain`); and :func:`gc_paused` for the calls that run them."""
from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import Iterator

import numba
import numpy as np
from numba import prange

__all__ = ["gc_paused", "njit", "prange", "threadsafe"]

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


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused, for a call that runs the kernels (also a
    decorator). The first kernel in a process loads numba's registries, and the collections
    their objects set off walk every object the process holds, torch's included (persist 8192,
    EPYC: 223 collections, 2 of all generations, 0.19 s; a process's first certified call
    1.16-1.39 -> 0.99-1.30 s, five processes each, medians 1.21 and 1.09 s). The calls make
    few objects of their own. Where another thread paused it too, the first to finish
    starts it again."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
