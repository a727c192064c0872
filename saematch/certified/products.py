"""All of ``A @ B.T`` kept in memory, each row computed by the GEMM once per solve.

A certificate round streams the rows its bounds leave open, and the same rows come back round
after round (gemma 8192: 8431 row streams of 3794 distinct rows, 55% of the certificate's GEMM
work). Kept rows are re-read instead: a scan of ``n_B`` float32 per row, not ``n_B D`` flops.
The driver keeps the products when they fit a budget (16384 x 16384 float32 is 1 GiB); the
candidate pass then computes them in place, and no certificate round runs the GEMM at all.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ProductStore:
    """``G[slot[i]] = a_i . B.T`` (float32, as :func:`saematch.gemm.gemm_blocks` rounds it) for
    every row i with ``slot[i] >= 0``. ``G`` is allocated uncommitted (``np.empty``): memory is
    taken only by the rows written."""

    G: np.ndarray  # [n_rows, n_cols] float32
    slot: np.ndarray  # [n_rows] int64, -1: not computed yet
    used: int = 0

    @classmethod
    def allocate(cls, n_rows: int, n_cols: int) -> ProductStore:
        return cls(G=np.empty((n_rows, n_cols), np.float32), slot=np.full(n_rows, -1, np.int64))

    def reserve(self, rows: np.ndarray) -> np.ndarray:
        """The block of ``G`` to write the products of ``rows`` (none kept yet) to, in order.
        They count as kept only after :meth:`keep`, so an interrupted write leaves none."""
        return self.G[self.used:self.used + len(rows)]

    def keep(self, rows: np.ndarray) -> None:
        """Mark the rows just written to the block :meth:`reserve` returned."""
        self.slot[rows] = self.used + np.arange(len(rows))
        self.used += len(rows)
