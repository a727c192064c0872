"""Blocks of ``A @ B.T`` (float32) for every pass over all pairs: numpy's BLAS on the CPU,
torch on CUDA. The cost matrices, the candidate graph and the certificate all round costs from
these same products, so the dense and the certified solver see the same numbers."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from tqdm import tqdm

from .device import device_name


def sqnorms(X: np.ndarray) -> np.ndarray:
    """Row squared norms, summed in float64 (einsum casts in small buffers: no float64 copy of
    X; 16384 x 4609: 0.11 s, against 0.22 s converting chunks first)."""
    return np.einsum("ij,ij->i", X, X, dtype=np.float64)


def exact_costs(na: np.ndarray, nb: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``c = |a|^2 + |b|^2 - 2 g`` as every consumer rounds it: norms summed in float64, minus
    2 g in float64, clamped at 0, then float32."""
    c = (np.asarray(na, np.float64) + np.asarray(nb, np.float64)) - 2.0 * np.asarray(
        g, np.float32).astype(np.float64)
    return np.maximum(c, 0.0).astype(np.float32)


def budget_bytes(device: str, mem_gib: float | None) -> float:
    """Bytes one GEMM block may take: ``mem_gib``, else 1 GiB on the CPU and a quarter of the
    free memory on CUDA."""
    if mem_gib is not None:
        return mem_gib * 2 ** 30
    if device_name(device) != "cpu":
        import torch
        return torch.cuda.mem_get_info(torch.device(device_name(device)))[0] / 4
    return 2 ** 30


def block_shape(n_rows: int, n_cols: int, block: int, budget: float,
                per_element: int = 4) -> tuple[int, int]:
    """(rows, columns) of one block: whole rows when ``block`` of them fit the budget (the
    GEMM is fastest on wide blocks), else fewer rows (at least 256), then column tiles."""
    rows = int(min(block, n_rows, max(256, budget // (per_element * max(n_cols, 1)))))
    cols = int(min(n_cols, max(1024, budget // (per_element * max(rows, 1)))))
    return max(rows, 1), max(cols, 1)


def block_starts(n_a: int, n_b: int, rows_per: int, tile: int) -> list[tuple[int, int]]:
    """The corners ``(r0, c0)`` of one pass's blocks, column tile by column tile."""
    return [(r0, c0) for c0 in range(0, n_b, tile) for r0 in range(0, n_a, rows_per)]


def gemm_blocks(A: np.ndarray, B: np.ndarray, *, block: int = 4096, device: str = "auto",
                mem_gib: float | None = None, whole_rows: bool = False,
                into: np.ndarray | None = None,
                progress: bool = False) -> Iterator[tuple[slice, int, Any]]:
    """Yield ``(rows, c0, G)`` with ``G = A[rows] @ B[c0:c0 + w].T`` (float32; a numpy array on
    the CPU, a torch tensor on CUDA) for every block of one pass over all pairs. ``whole_rows``
    makes every block ``block`` rows by all of B. The buffer is reused: consume G before the
    next block. ``into`` (CPU; [n_A, n_B] float32, C order): the blocks are whole rows, computed
    in place in those rows of ``into``, which then holds all of ``A @ B.T``."""
    dev = device_name(device)
    if into is not None:
        if dev != "cpu" or into.shape != (A.shape[0], B.shape[0]) or not into.flags.c_contiguous:
            raise ValueError("into must be a C-contiguous [n_A, n_B] float32 array, on the CPU")
        whole_rows = True
    if whole_rows:
        rows_per, tile = min(block, A.shape[0]), B.shape[0]
    else:
        rows_per, tile = block_shape(A.shape[0], B.shape[0], block, budget_bytes(dev, mem_gib))
    rows_per, tile = max(rows_per, 1), max(tile, 1)
    if dev == "cpu":
        buf = np.empty(0 if into is not None else rows_per * tile, dtype=np.float32)
        tA, tB = A, B
    else:
        import torch
        buf = torch.empty(rows_per * tile, dtype=torch.float32, device=dev)
        tA, tB = torch.from_numpy(A).to(dev), torch.from_numpy(B).to(dev)
    starts = block_starts(A.shape[0], B.shape[0], rows_per, tile)
    for r0, c0 in tqdm(starts, desc="GEMM blocks", unit="block", disable=not progress):
        r1, c1 = min(r0 + rows_per, A.shape[0]), min(c0 + tile, B.shape[0])
        out = (buf[:(r1 - r0) * (c1 - c0)].reshape(r1 - r0, c1 - c0) if into is None
               else into[r0:r1])
        if dev == "cpu":
            np.matmul(tA[r0:r1], tB[c0:c1].T, out=out)
        else:
            torch.mm(tA[r0:r1], tB[c0:c1].T, out=out)
        yield slice(r0, r1), c0, out
