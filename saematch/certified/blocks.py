"""Inputs and GEMM blocks shared by the candidate pass and the certificate."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from tqdm import tqdm

from ..device import pick_device
from ..errors import SAEMatchError


def as_f32(X: np.ndarray, name: str) -> np.ndarray:
    """A C-contiguous float32 [n, D] array (no copy when it already is one)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise SAEMatchError(f"{name} must be 2-D [n, D], got shape {X.shape}")
    return X


def check_pair(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 inputs with ``n_A <= n_B`` rows of one length D."""
    A, B = as_f32(A, "A"), as_f32(B, "B")
    if A.shape[1] != B.shape[1] or A.shape[0] > B.shape[0]:
        raise SAEMatchError(f"A [n_a, D] and B [n_b, D] need the same D and n_a <= n_b, got "
                            f"{A.shape} and {B.shape}")
    return A, B


def sqnorms(X: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Row squared norms in float64 (what ``cost_blocks`` adds), without a float64 copy of X."""
    out = np.empty(X.shape[0])
    for s in range(0, X.shape[0], chunk):
        x = torch.from_numpy(X[s:s + chunk])
        out[s:s + chunk] = (x.double() ** 2).sum(1).numpy()
    return out


def budget_bytes(dev: torch.device, mem_gib: float | None) -> float:
    """Bytes one GEMM block may take: ``mem_gib``, else 1 GiB on the CPU and a quarter of the
    free memory on CUDA."""
    if mem_gib is not None:
        return mem_gib * 2 ** 30
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[0] / 4
    return 2 ** 30


def block_shape(n_rows: int, n_cols: int, block: int, budget: float,
                per_element: int = 4) -> tuple[int, int]:
    """(rows, columns) of one block: whole rows when ``block`` of them fit the budget (the
    GEMM is fastest on wide blocks), else fewer rows (at least 256), then column tiles."""
    rows = int(min(block, n_rows, max(256, budget // (per_element * max(n_cols, 1)))))
    cols = int(min(n_cols, max(1024, budget // (per_element * max(rows, 1)))))
    return max(rows, 1), max(cols, 1)


def gemm_blocks(A: np.ndarray, B: np.ndarray, *, block: int = 4096, device: str = "auto",
                mem_gib: float | None = None,
                progress: bool = False) -> Iterator[tuple[slice, int, torch.Tensor]]:
    """Yield ``(rows, c0, G)`` with ``G = A[rows] @ B[c0:c0 + w].T`` (float32, on the device)
    for every block of one pass over all pairs. The buffer is reused: consume G before the next
    block."""
    dev = pick_device(device)
    tA = torch.from_numpy(A).to(dev)
    tB = torch.from_numpy(B).to(dev)
    rows_per, tile = block_shape(A.shape[0], B.shape[0], block, budget_bytes(dev, mem_gib))
    buf = torch.empty(rows_per * tile, dtype=torch.float32, device=dev)
    starts = [(r0, c0) for c0 in range(0, B.shape[0], tile) for r0 in range(0, A.shape[0],
                                                                           rows_per)]
    for r0, c0 in tqdm(starts, desc="GEMM blocks", unit="block", disable=not progress):
        r1, c1 = min(r0 + rows_per, A.shape[0]), min(c0 + tile, B.shape[0])
        out = buf[:(r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
        torch.mm(tA[r0:r1], tB[c0:c1].T, out=out)
        yield slice(r0, r1), c0, out
