"""A low-precision screen for the passes over all pairs: the candidate pass and every
certificate round's streamed rows. Most pairs are settled from a bf16 or int8 GEMM
(:mod:`.rounding`) with a rigorous error bound; only the pairs kept get an exact inner product.
Where the screen's products (stored as bf16) fit the budget (:func:`.products_bytes`, 2 bytes a
pair: 16384 x 16384 is 0.5 GiB) they are kept (``Screen(keep=True)``), and a round re-reads a
row instead of running the GEMM again (gemma 16384, EPYC: 16.3 s with the float32 products
kept, 10.8 s screened in bf16 with its products kept, same permutation).

On CPUs that multiply bf16 in hardware (AMX, AVX512-BF16) a bf16 GEMM takes 0.4x the time of a
float32 one (Xeon, 4096 x 8192 x 4609: 0.52 vs 1.32 s); an int8 GEMM takes 0.42x on AVX2 and
less with VNNI (:mod:`.rounding`). The screen's product ``h_ij`` of the rounded vectors ``a'``,
``b'`` (stored as bf16) is within

    e_ij = |a - a'| |b| + |a'| (|b - b'| + gamma' |b'|) + gamma |a| |b| + 2**-8 |h_ij|

of ``a . b`` and of the float32 GEMM's product (``gamma = D 2**-23``, at least the float32
bound ``D u / (1 - D u)`` of a D-term sum for D < 2**22; ``gamma'`` the format's own
accumulation before the output's rounding: the same for bf16, 2**-23 for int8, whose GEMM is
exact; ``2**-8 |h|`` the bf16 rounding of the output). So the exact cost lies in
``[c(h + e), c(h - e)]``, both rounded as :func:`saematch.gemm.exact_costs` rounds a cost.

- Candidate pass (:func:`upper_products`): the lists are selected by ``h + e``, so their k-th
  keys are lower bounds, valid for every pair left out; the pairs kept get exact inner products
  (float64 dots).
- Certificate (:func:`screen_rows`): a pair whose lower end passes passes. Each row keeps its m
  smallest lower ends; those pairs get exact inner products and join the graph as the float32
  stream's best pairs do. A row that has more than m pairs open and no proven violation among
  them, in a round that has none anywhere, is streamed again in float32.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from ..errors import SAEMatchError
from ..gemm import block_shape, budget_bytes, exact_costs
from ..jit import njit, prange
from .kernels import bf16_row, mask_edges, pair_dots, push_smallest
from .rounding import Bf16, Int8, int8_available

_INF = np.inf
_OUT = 2.0 ** -8  # bf16 rounding of the GEMM's float32 output, relative to the stored value
PRECISIONS = ("bf16", "int8")


def bf16_fast() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX tiles or AVX512-BF16)."""
    import torch
    cpu = getattr(torch, "cpu", None)
    return any(bool(getattr(cpu, name, lambda: False)())
               for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def screen_precision(screen: str, on_cpu: bool) -> str | None:
    """The screen's precision on the CPU, or None for none: "bf16" and "int8" as named, "off"
    none, "auto" bf16 where :func:`bf16_fast`, else int8 where torch multiplies int8. The exact
    costs of the pairs kept are then float64 dots rounded to float32, which can differ from a
    float32 GEMM's in the last ulp (as GEMMs of two block shapes do). CUDA never screens."""
    if screen not in ("auto", "off", *PRECISIONS):
        raise SAEMatchError(f"screen must be 'auto', 'bf16', 'int8' or 'off', got {screen!r}")
    if not on_cpu or screen == "off":
        return None
    if screen == "int8" and not int8_available():
        raise SAEMatchError("screen='int8' needs torch._int_mm on the CPU, which this torch "
                            "does not have")
    if screen == "auto":
        return "bf16" if bf16_fast() else "int8" if int8_available() else None
    return screen


class Screen:
    """A and B rounded (:mod:`.rounding`; ``precision`` "bf16" or "int8") for one solve, with
    the bound's terms: ``e = p1_i q1_j + p2_i q2_j`` plus the output rounding,
    ``p1 = |a - a'| + gamma |a|``, ``p2 = |a'|``, ``q1 = |b|``, ``q2 = |b - b'| + gamma' |b'|``.
    B' and the terms are made on first use and kept for later rounds (B' in bf16: n_B D 2
    bytes, 0.6 GB at 65536 x 4609; int8 half that); rows of A' are rounded when asked for (the
    terms, which take a pass in float64, are kept). With ``keep`` the products of every row
    that went through the GEMM are kept in ``H`` (bf16 as uint16 bits, ``kept[i]`` once row i
    is whole) and re-read later."""

    def __init__(self, A: np.ndarray, B: np.ndarray, keep: bool = False,
                 precision: str = "bf16"):
        if precision not in PRECISIONS:
            raise SAEMatchError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.A, self.B = A, B
        self.gamma = B.shape[1] * 2.0 ** -23
        self.fmt = Bf16(B.shape[1]) if precision == "bf16" else Int8(A, B)
        self._row_terms: tuple[np.ndarray, np.ndarray] | None = None
        # the products of every row streamed so far, when kept (uncommitted until written)
        self.H = np.empty((len(A), len(B)), np.uint16) if keep else None
        self.kept = np.zeros(len(A), bool)

    @functools.cached_property
    def columns(self) -> tuple[object, np.ndarray, np.ndarray]:
        """``(B', q1, q2)``."""
        B_, norm = self.fmt.round(self.B)
        return B_, norm[0], norm[2] + self.fmt.gamma * norm[1]

    def rows(self, R: np.ndarray | None = None) -> tuple[object, np.ndarray, np.ndarray]:
        """``(A', p1, p2)`` for the rows R of A (all rows if None; the terms of every row are
        made the first time, from that rounding when it is of all rows)."""
        A_ = self._round_rows() if self._row_terms is None else None
        p1, p2 = self._row_terms
        if R is None:
            return (self.fmt.cast(self.A) if A_ is None else A_), p1, p2
        return self.fmt.cast(self.A[R]), p1[R], p2[R]

    def _round_rows(self) -> object:
        A_, norm = self.fmt.round(self.A)
        self._row_terms = norm[2] + self.gamma * norm[0], norm[1]
        return A_

    def row_terms(self, R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(p1, p2)`` for the rows R of A."""
        if self._row_terms is None:
            self._round_rows()
        return self._row_terms[0][R], self._row_terms[1][R]

    def block_shape(self, n_rows: int, block: int, mem_gib: float | None,
                    per_pair: int) -> tuple[int, int]:
        """:func:`saematch.gemm.block_shape` for ``per_pair`` bytes a pair of the caller's
        and the format's own temporaries."""
        return block_shape(n_rows, len(self.B), block, budget_bytes("cpu", mem_gib),
                           per_pair + self.fmt.extra_bytes)

    def products(self, A_, rows_per: int, tile: int, progress: bool = False,
                 into: np.ndarray | None = None) -> Iterator[tuple[slice, int, np.ndarray]]:
        """The format's product blocks of rows ``A_`` (:meth:`rows`) by all of B'."""
        return self.fmt.products(A_, self.columns[0], rows_per, tile, progress, into)

    def keep_rows(self, R: np.ndarray, block: int, mem_gib: float | None,
                  deadline_hit) -> int | None:
        """Compute the products of the rows of R not kept yet into ``H``; how many (None if
        ``deadline_hit()`` stopped it: a row counts as kept once all of it is written)."""
        new = R[~self.kept[R]]
        if len(new):
            A_, _, _ = self.rows(new)
            rows_per, tile = self.block_shape(len(new), block, mem_gib, 2)
            for rows, c0, H in self.products(A_, rows_per, tile):
                if deadline_hit():
                    return None
                self.H[new[rows], c0:c0 + H.shape[1]] = H
            self.kept[new] = True
        return len(new)


@njit(parallel=True, cache=True)
def _upper_block(H, r0, c0, p1, p2, q1, q2, out):
    """``out >= a . b`` and ``>=`` the float32 GEMM's product, for the bf16 products ``H``
    (uint16 bits) of rows r0.. and columns c0..: ``h + e``, widened so that rounding to
    float32 cannot take it below."""
    w = H.shape[1]
    q1, q2 = q1[c0:c0 + w], q2[c0:c0 + w]  # indexed from 0: the loop vectorises
    for tt in prange(H.shape[0]):
        t = r0 + tt
        h = bf16_row(H, tt)
        a1, a2 = p1[t], p2[t]
        for jj in range(w):
            g = np.float64(h[jj])
            e = _err(a1, a2, q1[jj], q2[jj], g)
            out[tt, jj] = g + e * (1.0 + 2.0 ** -20) + 2.0 ** -22 * abs(g)


def upper_products(screen: Screen, *, block: int = 4096, mem_gib: float | None = None,
                   progress: bool = False) -> Iterator[tuple[slice, int, np.ndarray]]:
    """:func:`saematch.gemm.gemm_blocks` through the screen's GEMM: blocks ``(rows, c0, U)`` with
    ``U`` (float32) an upper bound of every product in ``A[rows] @ B[c0:c0 + w].T``. Keys that
    fall as the product grows (costs, minus inner products) are then lower bounds. With kept
    products (``screen.H``) the GEMM writes whole rows of ``H`` in place."""
    A_, p1, p2 = screen.rows()
    _, q1, q2 = screen.columns
    kept = screen.H is not None
    rows_per, tile = screen.block_shape(len(screen.A), block, mem_gib, 4 if kept else 6)
    if kept:  # written in place: whole rows
        tile = len(screen.B)
    ubuf = np.empty(rows_per * tile, np.float32)
    for rows, c0, H in screen.products(A_, rows_per, tile, progress, into=screen.H):
        U = ubuf[:H.size].reshape(H.shape)
        _upper_block(H, rows.start, c0, p1, p2, q1, q2, U)
        yield rows, c0, U
    screen.kept[:] = kept


@njit(cache=True)
def _err(a1, a2, b1, b2, h):
    """The bound ``e`` on ``|a . b - h|`` from the row's terms, the column's and ``h``."""
    return a1 * b1 + a2 * b2 + _OUT * abs(h)


@njit(cache=True)
def _end(g, sign, ai, ui, si, a1, a2, nb_j, v_j, sb_j, q1_j, q2_j):
    """The lower (``sign`` -1) or upper (+1) end of a pair's shifted reduced cost
    ``c - u - v + sa_i + sb_j`` from its bf16 product ``g`` (:func:`_err`), the cost rounded as
    :func:`saematch.gemm.exact_costs` rounds it."""
    e = 2.0 * _err(a1, a2, q1_j, q2_j, g)
    base = (ai + nb_j) - 2.0 * g
    shift = si + sb_j - ui - v_j
    return np.float64(np.float32(max(base + sign * e, 0.0))) + shift


@njit(parallel=True, cache=True)
def _screen_block(H, r0, c0, na, nb, u, v, sa, sb, e_ptr, e_col, p1, p2, q1, q2, hv, hj, hg,
                  n_lo, n_hi):
    """Rows r0.. of the streamed set against columns c0.. (``H``: their bf16 products, as
    uint16 bits). Per row, over pairs outside the graph: the count of lower ends (:func:`_end`)
    below 0, a bounded max-heap of the m smallest lower ends, and the count of upper ends below
    0 (proven violations), computed only where the lower end is below 0 (few pairs; the upper
    end is never below the lower one)."""
    w = H.shape[1]
    # the columns' arrays sliced to the block: indexed from 0 the loop vectorises (at c0 + j,
    # 2x slower)
    nb_, v_, sb_ = nb[c0:c0 + w], v[c0:c0 + w], sb[c0:c0 + w]
    q1_, q2_ = q1[c0:c0 + w], q2[c0:c0 + w]
    for tt in prange(H.shape[0]):
        t = r0 + tt
        h = bf16_row(H, tt)
        lo = np.empty(w)
        ai, ui, si, a1, a2 = na[t], u[t], sa[t], p1[t], p2[t]
        for j in range(w):
            lo[j] = _end(np.float64(h[j]), -1.0, ai, ui, si, a1, a2, nb_[j], v_[j], sb_[j],
                         q1_[j], q2_[j])
        mask_edges(lo, e_ptr, e_col, t, c0)
        for j in range(w):
            if lo[j] < 0.0:
                n_hi[t] += _end(np.float64(h[j]), 1.0, ai, ui, si, a1, a2, nb_[j], v_[j], sb_[j],
                                q1_[j], q2_[j]) < 0.0
        n_lo[t] += push_smallest(hv[t], hj[t], hg[t], lo, c0, h)


class Screened(NamedTuple):
    """Per streamed row: the m smallest lower ends (sorted) with their columns, the exact
    shifted reduced costs and costs of those pairs, how many pairs have a lower end below 0,
    and how many are proven violations (upper end below 0)."""

    lower: np.ndarray
    cols: np.ndarray
    keys: np.ndarray
    costs: np.ndarray
    n_open: np.ndarray
    n_proven: np.ndarray
    computed: int  # rows that went through the screen's GEMM (the others were kept)


def screen_rows(screen: Screen, R: np.ndarray, sub, na: np.ndarray, nb: np.ndarray,
                u: np.ndarray, v: np.ndarray, sa: np.ndarray, sb: np.ndarray, m: int, block: int,
                mem_gib: float | None, deadline_hit) -> Screened | None:
    """Rows R of ``screen.A`` (their graph rows ``sub``) against all of ``screen.B``, through the
    screen's GEMM (per-row arrays ``na``, ``u``, ``sa`` are R's; ``nb``, ``v``, ``sb`` all
    columns'). None if ``deadline_hit()`` turned true between GEMM blocks."""
    B = screen.B
    n, nr = B.shape[0], len(R)
    _, q1, q2 = screen.columns
    hv = np.full((nr, m), _INF)
    hj = np.zeros((nr, m), np.int64)
    hg = np.zeros((nr, m), np.float32)
    n_lo, n_hi = np.zeros(nr, np.int64), np.zeros(nr, np.int64)
    rows_per, tile = screen.block_shape(nr, block, mem_gib, 2)
    ptr, col = sub.indptr.astype(np.int64), sub.indices.astype(np.int64)
    if screen.H is None:
        A_, p1, p2 = screen.rows(R)
        blocks = screen.products(A_, rows_per, tile)
        computed = nr
    else:  # kept rows are re-read, whole rows at a time
        computed = screen.keep_rows(R, block, mem_gib, deadline_hit)
        if computed is None:
            return None
        p1, p2 = screen.row_terms(R)
        step = max(1, rows_per * tile // n)
        blocks = ((slice(r0, min(nr, r0 + step)), 0, screen.H[R[r0:r0 + step]])
                  for r0 in range(0, nr, step))
    for rows, c0, H in blocks:
        if deadline_hit():
            return None
        _screen_block(H, rows.start, c0, na, nb, u, v, sa, sb, ptr, col, p1, p2, q1, q2, hv,
                      hj, hg, n_lo, n_hi)
    order = np.argsort(hv, axis=1, kind="stable")
    hv, hj = np.take_along_axis(hv, order, 1), np.take_along_axis(hj, order, 1)
    keys = np.full(hv.shape, _INF)
    costs = np.zeros(hv.shape, np.float32)
    rr, cc = np.nonzero(np.isfinite(hv))
    if len(rr):
        g = np.empty(len(rr), np.float32)
        pair_dots(screen.A, B, R[rr], hj[rr, cc], g)
        costs[rr, cc] = exact_costs(na[rr], nb[hj[rr, cc]], g)
        keys[rr, cc] = ((costs[rr, cc].astype(np.float64) - u[rr] - v[hj[rr, cc]]) + sa[rr]
                        + sb[hj[rr, cc]])
    return Screened(lower=hv, cols=hj, keys=keys, costs=costs, n_open=n_lo, n_proven=n_hi,
                    computed=computed)
