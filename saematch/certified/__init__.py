"""Exact assignment at any width: sparse candidates plus a dual optimality certificate.

After Lee and Orlin (1993). The dense problem ``min_P sum_i c[i, P(i)]``,
``c_ij = ||a_i - b_j||^2`` (A's rows into distinct rows of B, ``n_A <= n_B``), is solved on a
sparse *candidate graph* and then proved optimal for all pairs:

1. :mod:`.graph`: one blockwise GEMM pass keeps every row's and column's best partners, with
   bounds for every pair left out, plus random partners so the graph has a perfect matching
   (``candidate_graph``; HDF5 with ``write_candidates`` /
   ``read_candidates``);
2. :mod:`.sparse_lap`: Jonker-Volgenant on the graph (column reduction, augmenting row
   reduction, shortest augmenting paths), with dual potentials u, v that prove the matching
   optimal on the graph, warm-started when edges are added;
3. :mod:`.certificate`: every pair must have ``c_ij - u_i - v_j >= -tol (|a_i|^2 + |b_j|^2)``;
   bounds settle most rows, the rest are streamed through the GEMM (or re-read from
   :mod:`.products`, ``A @ B.T`` kept in memory where it fits; or, where it does not, screened
   by a bf16 GEMM with an error bound, :mod:`.screen`), and their violating pairs join the graph
   (``check_duals``);
4. :mod:`.driver`: ``certified_assign`` repeats 2-3 until nothing violates.

Tolerance: a cost is a float32 rounding of ``|a|^2 + |b|^2 - 2 a.b`` computed with a float32
GEMM, so it is defined only to about one float32 ulp of ``|a|^2 + |b|^2`` (the same pair
computed in blocks of another shape differs by that much). The default ``tol`` = 2**-21 (4 ulps
of that scale, per pair) is the resolution of the data, not of the method.
"""
from .certificate import TOL, DualCheck, check_duals
from .driver import K_STREAMED, certified_assign, default_k
from .graph import CandidateGraph, candidate_graph, read_candidates, write_candidates
from .products import PRODUCTS_GIB, products_bytes

__all__ = ["K_STREAMED", "PRODUCTS_GIB", "TOL", "CandidateGraph", "DualCheck", "candidate_graph",
           "certified_assign", "check_duals", "default_k", "products_bytes", "read_candidates",
           "write_candidates"]
