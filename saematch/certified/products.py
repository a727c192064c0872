"""All of ``A @ B.T`` kept in memory, each row computed by the GEMM once per solve.

A certificate round streams the rows its bounds leave open, and the same rows come back round
after round (gemma 8192: 8431 row streams of 3794 distinct rows, 55% of the certificate's GEMM
work). Kept rows are re-read instead: a scan of ``n_B`` float32 per row, not ``n_B D`` flops.
The driver keeps the products when they fit a budget (16384 x 16384 float32 is 1 GiB); the
candidate pass then computes them in place, and no certificate round runs the GEMM at all.
Where the passes are screened in bf16 the screen keeps its own products instead
(:class:`.screen.Screen`, 2 bytes a pair).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PRODUCTS_GIB = 4.0  # keep A @ B.T in memory up to this size (16384 x 16384 float32 is 1 GiB)


def products_bytes(n_rows: int, n_cols: int, products_gib: float | None = None,
                   itemsize: int = 4) -> int:
    """Bytes :func:`.certified_assign` keeps for ``A @ B.T`` on the CPU (0: it streams), in
    float32 or, screened (:mod:`.screen`), in bf16 (``itemsize`` 2)."""
    size = itemsize * n_rows * n_cols
    return size if size <= (PRODUCTS_GIB if products_gib is None else products_gib) * 2 ** 30 else 0


@dataclass
class ProductStore:
    """``G[i] = a_i . B.T`` (float32, as :func:`saematch.gemm.gemm_blocks` rounds it) for every
    row i with ``kept[i]``. ``G`` is allocated uncommitted (``np.empty``): memory is taken only
    by the rows written. A row counts as kept only once all of it is written, so a GEMM stopped
    half-way leaves no row that looks done."""

    G: np.ndarray  # [n_rows, n_cols] float32
    kept: np.ndarray  # [n_rows] bool

    @classmethod
    def allocate(cls, n_rows: int, n_cols: int) -> ProductStore:
        return cls(G=np.empty((n_rows, n_cols), np.float32), kept=np.zeros(n_rows, bool))
