"""Blockwise cost matrices between the feature vectors of two SAEs.

The cost of pairing feature i of layer A with feature j of layer B is ``||a_i - b_j||^2``,
computed as ``|a_i|^2 + |b_j|^2 - 2 a_i.b_j`` so that any block is one GEMM
(:func:`saematch.gemm.gemm_blocks`: numpy's BLAS on the CPU, torch on CUDA when present).
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import h5py
import numpy as np

from .atomic import atomic_path
from .gemm import exact_costs, gemm_blocks, sqnorms
from .jit import njit, prange


def cost_blocks(A: np.ndarray, B: np.ndarray, block: int = 4096, device: str = "auto",
                progress: bool = False) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(rows, C[rows, :])`` (float32) for the squared-distance matrix, ``block`` rows at
    a time, rounded as :func:`saematch.gemm.exact_costs` rounds them (for large matrices by
    :func:`_costs_in_place`, the same bits). The block may be a buffer that the next one
    reuses: consume it first.

    Peak memory is ``block * n_B`` floats plus both inputs (below 2^24 pairs, numpy's float64
    temporaries of a block too).
    """
    A, B = np.ascontiguousarray(A, np.float32), np.ascontiguousarray(B, np.float32)
    na, nb = sqnorms(A), sqnorms(B)
    fused = A.shape[0] * B.shape[0] >= _FUSED_PAIRS
    for rows, _, G in gemm_blocks(A, B, block=block, device=device, whole_rows=True,
                                  progress=progress):
        g = G if isinstance(G, np.ndarray) else G.cpu().numpy()
        if fused:
            _costs_in_place(na[rows], nb, g)
            yield rows, g
        else:
            yield rows, exact_costs(na[rows, None], nb[None, :], g)


# from this many pairs on the compiled kernel pays for numba's start in a fresh process
# (0.3-0.4 s: a 1024 x 1024 cost matrix job took 0.43 s with it, 0.03 s without)
_FUSED_PAIRS = 1 << 24


@njit(cache=True)
def rounded_cost(na_i, nb_j, g):
    """One pair's cost as :func:`saematch.gemm.exact_costs` rounds it (the same float64
    operations, so the same float32 bits), for compiled loops."""
    return np.float32(max((na_i + nb_j) - 2.0 * np.float64(g), 0.0))


@njit(parallel=True, cache=True)
def _costs_in_place(na, nb, g):
    """``g <- exact_costs(na[:, None], nb[None, :], g)`` in one pass without float64
    temporaries (persist 8192: cost matrix 2.1-2.7 s with numpy's temporaries for a 0.7 s
    GEMM)."""
    for i in prange(g.shape[0]):
        a = na[i]
        for j in range(g.shape[1]):
            g[i, j] = rounded_cost(a, nb[j], g[i, j])


def cost_matrix(A: np.ndarray, B: np.ndarray, block: int = 4096,
                device: str = "auto") -> np.ndarray:
    """The dense [n_A, n_B] squared-distance matrix (float32), built blockwise."""
    out = np.empty((A.shape[0], B.shape[0]), dtype=np.float32)
    for rows, c in cost_blocks(A, B, block, device):
        out[rows] = c
    return out


def nearest(A: np.ndarray, B: np.ndarray, block: int = 4096,
            device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """For every row of A, its nearest row of B and that cost: ``argmin_j ||a_i - b_j||^2``
    (the first on ties) and the minimum, by one blockwise GEMM pass (``cost_blocks``) that keeps
    only the row minima: memory ``block * n_B`` floats, whatever the sizes."""
    partner = np.empty(A.shape[0], dtype=np.int64)
    cost = np.empty(A.shape[0], dtype=np.float64)
    for rows, c in cost_blocks(A, B, block, device, progress=True):
        partner[rows] = c.argmin(axis=1)
        cost[rows] = np.take_along_axis(c, partner[rows, None], 1)[:, 0]
    return partner, cost


def write_cost_matrix(path: str | os.PathLike, A: np.ndarray, B: np.ndarray, *,
                      attrs: dict, block: int = 4096, device: str = "auto") -> None:
    """Stream the cost matrix into HDF5 dataset ``cost`` block by block, atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        ds = h5.create_dataset("cost", shape=(A.shape[0], B.shape[0]), dtype="f4",
                               chunks=(min(block, A.shape[0]), B.shape[0]))
        for rows, c in cost_blocks(A, B, block, device, progress=True):
            ds[rows] = c
        for k, v in attrs.items():
            h5.attrs[k] = v
