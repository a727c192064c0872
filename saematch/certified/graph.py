"""The candidate graph: one blockwise GEMM pass keeps every row's and column's best partners.

For a pair (i, j) the GEMM gives ``g_ij = a_i . b_j`` and the cost is
``c_ij = |a_i|^2 + |b_j|^2 - 2 g_ij`` (rounded as :func:`saematch.gemm.exact_costs` rounds
it). Four lists of ``k`` pairs are kept, each with its k-th key as a bound for every pair it
left out:

- per row, by cost (key ``|b_j|^2 - 2 g_ij``) and by inner product (key ``-2 g_ij``);
- per column, by cost (key ``|a_i|^2 - 2 g_ij``) and by inner product.

Features without a counterpart are near-orthogonal to everything, so by raw cost they all pile
onto the few smallest-norm partners; by inner product they do not, hence both. The bounds, for
any pair outside the graph: ``c_ij >= max(row_kth[i], col_kth[j])`` and
``c_ij >= |a_i|^2 + |b_j|^2 + max(row_kth_ip[i], col_kth_ip[j])``.

Features without a counterpart also pile up by inner product (onto the largest-norm partners,
or those with the largest encoder bias), so the lists alone can leave a group of rows with too
few distinct columns: the optimum on such a graph breaks clear pairs to cover them, and every
later round pays for duals that are hundreds of units off. ``random_k`` random partners per row
(a union of random permutations) make the graph an expander that holds a perfect matching of
every part; they cost ``n random_k D`` flops, not a pass (gemma generator at 8192: Dijkstra steps
10.7M -> 1.6M, solve 15.7 -> 2.8 s, same permutation).

Selection costs a few comparisons per GEMM output: on the CPU, numba kernels keep a bounded
max-heap per row and per column and only touch it when a key beats the current k-th
(both cores, one pass over each block); on CUDA, ``torch.topk`` of each block. Where the CPU
screens (:mod:`.screen`: bf16 or int8) the selection is from upper bounds of the products by a
low-precision GEMM: the k-th keys are then lower bounds, still valid for every pair left out, and
the kept pairs get exact inner products.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h5py
import numpy as np
import scipy.sparse as sp

from ..atomic import atomic_path
from ..device import is_cpu, pick_device
from ..errors import SAEMatchError
from ..gemm import exact_costs, gemm_blocks, sqnorms
from ..jit import gc_paused, njit, prange
from .blocks import as_f32
from .kernels import heap_replace, pair_dots
from .products import ProductStore
from .screen import Screen, screen_precision, upper_products

if TYPE_CHECKING:  # torch is imported where CUDA needs it: the CPU paths take 2 s less to start
    import torch

_INF = np.inf
_RUN = 64  # columns per stretch that the selection tests at once
_COLS = 256  # columns per thread in the column selection (64: 2.7x slower, strided reads)
FORMAT = "saematch-candidates-v2"


@dataclass
class CandidateGraph:
    """Sparse candidate pairs [n_rows, n_cols] with the bounds that cover every pair left out.

    ``costs`` is a CSR matrix whose *stored* entries are the candidate pairs (explicit zeros
    included: a zero cost is an edge). For any pair (i, j) not stored:
    ``c_ij >= max(row_kth[i], col_kth[j])`` and
    ``c_ij >= row_sq[i] + col_sq[j] + max(row_kth_ip[i], col_kth_ip[j])``.
    """

    costs: sp.csr_matrix  # [n_rows, n_cols] float32
    row_kth: np.ndarray  # [n_rows] float64
    col_kth: np.ndarray  # [n_cols] float64
    row_kth_ip: np.ndarray  # [n_rows] float64, bound on c_ij - |a_i|^2 - |b_j|^2
    col_kth_ip: np.ndarray  # [n_cols] float64
    row_sq: np.ndarray  # [n_rows] float64, |a_i|^2 as the cost GEMM computes it
    col_sq: np.ndarray  # [n_cols] float64, |b_j|^2
    k: int

    @property
    def n(self) -> int:
        return self.costs.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return self.costs.shape

    @property
    def nnz(self) -> int:
        return int(self.costs.nnz)


# ------------------------------------------------------------------ selection (numba, CPU)
@njit(parallel=True, cache=True)
def _select_rows(G, r0, c0, nb, hv_c, hi_c, hg_c, hv_p, hi_p, hg_p):
    """Rows r0.. of the block: keep the k smallest ``nb_j - 2 g`` (cost) and ``-2 g`` (ip).
    Each stretch of ``_RUN`` columns first gets its smallest keys, in a loop the compiler
    vectorises (a minimum, 2.3x faster than counting the keys below the tops); most stretches
    beat neither heap's top and are skipped."""
    r, w = G.shape
    nb = nb[c0:c0 + w]  # indexed from 0: the stretch's loop vectorises
    for t in prange(r):
        i = r0 + t
        top_c = hv_c[i, 0]
        top_p = hv_p[i, 0]
        for j0 in range(0, w, _RUN):
            j1 = min(w, j0 + _RUN)
            min_c = min_p = _INF
            for jj in range(j0, j1):
                kp = -2.0 * np.float64(G[t, jj])
                min_p = min(min_p, kp)
                min_c = min(min_c, nb[jj] + kp)
            if min_p >= top_p and min_c >= top_c:
                continue
            for jj in range(j0, j1):
                g = G[t, jj]
                kp = -2.0 * np.float64(g)
                kc = nb[jj] + kp
                if kc < top_c:
                    heap_replace(hv_c[i], hi_c[i], hg_c[i], kc, c0 + jj, g)
                    top_c = hv_c[i, 0]
                if kp < top_p:
                    heap_replace(hv_p[i], hi_p[i], hg_p[i], kp, c0 + jj, g)
                    top_p = hv_p[i, 0]


@njit(parallel=True, cache=True)
def _select_cols(G, r0, c0, na, hv_c, hi_c, hg_c, hv_p, hi_p, hg_p):
    """Columns c0.. of the block: the same two lists per column, over the block's rows. Each
    thread takes ``_COLS`` columns (their heaps' tops in two short arrays) and reads them row
    by row, a stretch of ``_RUN`` at a time: ``x < y`` exactly when ``x - y < 0`` (no
    difference of two distinct floats rounds to 0), so one vectorised minimum of key minus top
    says whether any key of the stretch beats its column's top."""
    r, w = G.shape
    for t in prange((w + _COLS - 1) // _COLS):
        j0 = t * _COLS
        j1 = min(w, j0 + _COLS)
        top_c = np.empty(j1 - j0)
        top_p = np.empty(j1 - j0)
        for jj in range(j0, j1):
            top_c[jj - j0] = hv_c[c0 + jj, 0]
            top_p[jj - j0] = hv_p[c0 + jj, 0]
        for ii in range(r):
            i = r0 + ii
            ai = na[i]
            for s0 in range(j0, j1, _RUN):
                s1 = min(j1, s0 + _RUN)
                low = _INF
                for jj in range(s0, s1):
                    kp = -2.0 * np.float64(G[ii, jj])
                    low = min(low, min(kp - top_p[jj - j0], (ai + kp) - top_c[jj - j0]))
                if low >= 0.0:
                    continue
                for jj in range(s0, s1):
                    j = c0 + jj
                    g = G[ii, jj]
                    kp = -2.0 * np.float64(g)
                    kc = ai + kp
                    if kc < top_c[jj - j0]:
                        heap_replace(hv_c[j], hi_c[j], hg_c[j], kc, i, g)
                        top_c[jj - j0] = hv_c[j, 0]
                    if kp < top_p[jj - j0]:
                        heap_replace(hv_p[j], hi_p[j], hg_p[j], kp, i, g)
                        top_p[jj - j0] = hv_p[j, 0]


class _Lists:
    """k best partners by one key for each of ``n`` items (unordered max-heaps)."""

    def __init__(self, n: int, k: int):
        self.key = np.full((n, k), _INF)
        self.idx = np.zeros((n, k), np.int64)
        self.g = np.zeros((n, k), np.float32)  # the inner product, for the exact cost

    def kth(self) -> np.ndarray:
        return self.key.max(1)


def _random_partners(n_a: int, n_b: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    """``r`` random partners per row: the first ``n_a`` entries of ``r`` random permutations of
    the columns (seeded by the shape, so a graph is reproducible)."""
    rng = np.random.default_rng([n_a, n_b, r])
    cols = np.array([rng.permutation(n_b)[:n_a] for _ in range(r)], np.int64).reshape(r, n_a)
    return np.repeat(np.arange(n_a), r), cols.T.ravel()


def _select_torch(G: torch.Tensor, rows: slice, c0: int, tna: torch.Tensor, tnb: torch.Tensor,
                  lists: dict, k: int) -> None:
    """The same selection with ``torch.topk`` (CUDA): merge each block's k best into the lists."""
    import torch
    r, w = G.shape
    kp = -2.0 * G.double()
    for name, key, axis in (("row_cost", kp + tnb[c0:c0 + w][None, :], 1), ("row_ip", kp, 1),
                            ("col_cost", kp + tna[rows][:, None], 0), ("col_ip", kp, 0)):
        kk = min(k, key.shape[axis])
        top, pos = torch.topk(key, kk, dim=axis, largest=False)
        g = torch.gather(G, axis, pos)
        if axis == 1:
            items, idx = slice(rows.start, rows.stop), pos + c0
        else:
            items, idx = slice(c0, c0 + w), pos + rows.start
            top, g, idx = top.T, g.T, idx.T
        lst = lists[name]
        cat_v = torch.cat([lst["key"][items], top], 1)
        best, sel = torch.topk(cat_v, k, dim=1, largest=False)
        lst["key"][items] = best
        lst["idx"][items] = torch.gather(torch.cat([lst["idx"][items], idx], 1), 1, sel)
        lst["g"][items] = torch.gather(torch.cat([lst["g"][items], g], 1), 1, sel)


@gc_paused()
def candidate_graph(A: np.ndarray, B: np.ndarray, k: int = 16, *, random_k: int | None = None,
                    block: int = 4096, device: str = "auto", mem_gib: float | None = None,
                    store: ProductStore | None = None, screen: str | Screen = "auto",
                    progress: bool = False) -> CandidateGraph:
    """Candidate pairs of A's rows (n_rows <= n_cols of B) by one blockwise GEMM pass: for every
    row and every column its ``k`` smallest costs and its ``k`` largest inner products, with the
    k-th values as bounds, plus ``random_k`` (default ``2 k``) random partners per row.
    Memory O((n_rows + n_cols) k) plus one GEMM block (``mem_gib``). A product ``store`` (CPU)
    receives all of ``A @ B.T``: the pass computes it in place. Without one, ``screen``
    (:func:`.screen.screen_precision`; or a :class:`.screen.Screen` of A and B to use, which may
    keep its products) may select from upper bounds of the products by a bf16 or int8 GEMM,
    keeping
    lower bounds of the keys (:func:`.screen.upper_products`); the kept pairs then get exact
    inner products."""
    A, B = as_f32(A, "A"), as_f32(B, "B")
    if A.shape[1] != B.shape[1]:
        raise SAEMatchError(f"A and B must have the same feature length, got {A.shape} and "
                            f"{B.shape}")
    if A.shape[0] > B.shape[0]:
        raise SAEMatchError(f"A must not have more rows than B, got {A.shape[0]} > {B.shape[0]}")
    if k < 1:
        raise SAEMatchError(f"k must be >= 1, got {k}")
    random_k = 2 * k if random_k is None else int(random_k)
    if random_k < 0:
        raise SAEMatchError(f"random_k must be >= 0, got {random_k}")
    n_a, n_b = A.shape[0], B.shape[0]
    kr, kc = min(k, n_b), min(k, n_a)
    na, nb = sqnorms(A), sqnorms(B)
    on_cpu = is_cpu(device)
    if on_cpu:
        rows_l = {name: _Lists(n_a, kr) for name in ("row_cost", "row_ip")}
        cols_l = {name: _Lists(n_b, kc) for name in ("col_cost", "col_ip")}
    else:
        import torch
        dev = pick_device(device)
        tl = {}
        for name, n_items, kk in (("row_cost", n_a, kr), ("row_ip", n_a, kr),
                                  ("col_cost", n_b, kc), ("col_ip", n_b, kc)):
            tl[name] = {"key": torch.full((n_items, kk), _INF, dtype=torch.float64, device=dev),
                        "idx": torch.zeros((n_items, kk), dtype=torch.int64, device=dev),
                        "g": torch.zeros((n_items, kk), dtype=torch.float32, device=dev)}
        tna, tnb = torch.from_numpy(na).to(dev), torch.from_numpy(nb).to(dev)
    fill = store is not None and on_cpu
    shared = isinstance(screen, Screen)  # the driver's, kept for its certificate rounds
    precision = None if fill or shared else screen_precision(screen, on_cpu)
    screened = not fill and (on_cpu if shared else precision is not None)
    blocks = (upper_products(screen if shared else Screen(A, B, precision=precision),
                             block=block, mem_gib=mem_gib,
                             progress=progress)
              if screened else
              gemm_blocks(A, B, block=block, device=device, mem_gib=mem_gib,
                          into=store.G if fill else None, progress=progress))
    for rows, c0, G in blocks:
        if on_cpu:
            _select_rows(G, rows.start, c0, nb, *_arrays(rows_l["row_cost"]),
                         *_arrays(rows_l["row_ip"]))
            _select_cols(G, rows.start, c0, na, *_arrays(cols_l["col_cost"]),
                         *_arrays(cols_l["col_ip"]))
        else:
            _select_torch(G, rows, c0, tna, tnb, tl, k)
    if not on_cpu:
        rows_l, cols_l = {}, {}
        for name, lst in tl.items():
            out = _Lists(0, 1)
            out.key, out.idx, out.g = (lst[x].cpu().numpy() for x in ("key", "idx", "g"))
            (rows_l if name.startswith("row") else cols_l)[name] = out
    r_idx = np.repeat(np.arange(n_a), kr)
    c_idx = np.repeat(np.arange(n_b), kc)
    rnd_r, rnd_c = _random_partners(n_a, n_b, min(random_k, n_b))
    if fill:  # the products are at hand: read the random pairs instead of n random_k dots
        store.kept[:] = True
        rnd_g = store.G[rnd_r, rnd_c]
    else:
        rnd_g = np.empty(len(rnd_r), np.float32)
        pair_dots(A, B, rnd_r, rnd_c, rnd_g)
    rows_all = np.concatenate([r_idx, r_idx, cols_l["col_cost"].idx.ravel(),
                               cols_l["col_ip"].idx.ravel(), rnd_r])
    cols_all = np.concatenate([rows_l["row_cost"].idx.ravel(), rows_l["row_ip"].idx.ravel(),
                               c_idx, c_idx, rnd_c])
    g_all = np.concatenate([rows_l["row_cost"].g.ravel(), rows_l["row_ip"].g.ravel(),
                            cols_l["col_cost"].g.ravel(), cols_l["col_ip"].g.ravel(), rnd_g])
    if screened:  # the lists hold upper bounds of their products: compute them exactly
        listed = len(g_all) - len(rnd_g)
        pair_dots(A, B, rows_all[:listed], cols_all[:listed], g_all[:listed])
    costs = build_csr(rows_all, cols_all, exact_costs(na[rows_all], nb[cols_all], g_all),
                      (n_a, n_b))
    # k-th keys as bounds on c (cost lists) and on c - |a|^2 - |b|^2 (inner-product lists);
    # a list shorter than k (k > the other side) holds every pair: no pair is left out
    full_r, full_c = kr == n_b, kc == n_a
    row_kth = np.full(n_a, _INF) if full_r else rows_l["row_cost"].kth() + na
    row_kth_ip = np.full(n_a, _INF) if full_r else rows_l["row_ip"].kth()
    col_kth = np.full(n_b, _INF) if full_c else cols_l["col_cost"].kth() + nb
    col_kth_ip = np.full(n_b, _INF) if full_c else cols_l["col_ip"].kth()
    return CandidateGraph(costs=costs, row_kth=_finite(row_kth), col_kth=_finite(col_kth),
                          row_kth_ip=_finite(row_kth_ip), col_kth_ip=_finite(col_kth_ip),
                          row_sq=na, col_sq=nb, k=k)


_BIG = 1e300  # "no pair is left out": a finite stand-in for +inf in the stored bounds


def _finite(x: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(x), x, _BIG)


def _arrays(lst: _Lists) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return lst.key, lst.idx, lst.g


# ------------------------------------------------------------------------------ CSR helpers
def build_csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray,
              shape: tuple[int, int]) -> sp.csr_matrix:
    """CSR from COO keeping the first value of duplicate pairs (never summing them)."""
    n_r, n_c = shape
    keys = rows.astype(np.int64) * n_c + cols.astype(np.int64)
    keys, first = np.unique(keys, return_index=True)
    idx_dtype = np.int32 if max(n_r, n_c, len(keys)) < 2 ** 31 else np.int64
    indices = (keys % n_c).astype(idx_dtype)
    counts = np.bincount(keys // n_c, minlength=n_r)
    indptr = np.zeros(n_r + 1, dtype=idx_dtype)
    np.cumsum(counts, out=indptr[1:])
    data = np.asarray(vals, dtype=np.float32)[first]
    return sp.csr_matrix((data, indices, indptr), shape=shape, copy=False)


def add_edges(costs: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray,
              vals: np.ndarray) -> sp.csr_matrix:
    """The graph with extra pairs (pairs already present keep their stored cost; of repeated
    new pairs the first counts). A merge of sorted rows: O(nnz) instead of a sort of all edges
    (gemma 65536, 13M edges + 1M: 1.6 s each round for a sort)."""
    if not costs.has_sorted_indices:
        costs.sort_indices()
    add = build_csr(rows, cols, vals, costs.shape)
    n_r, n_c = costs.shape
    # each merged row at its most (both rows whole), then the pairs in both dropped
    start = costs.indptr[:-1].astype(np.int64) + add.indptr[:-1]
    idx = np.empty(costs.nnz + add.nnz, np.int64)
    val = np.empty(costs.nnz + add.nnz, np.float32)
    counts = np.empty(n_r, np.int64)
    _merge(costs.indptr, costs.indices, costs.data, add.indptr, add.indices, add.data, start,
           idx, val, counts)
    width = np.diff(costs.indptr) + np.diff(add.indptr)
    keep = np.arange(len(idx)) - np.repeat(start, width) < np.repeat(counts, width)
    idx_dtype = np.int32 if max(n_r, n_c, int(counts.sum())) < 2 ** 31 else np.int64
    indptr = np.zeros(n_r + 1, dtype=idx_dtype)
    np.cumsum(counts, out=indptr[1:])
    return sp.csr_matrix((val[keep], idx[keep].astype(idx_dtype), indptr), shape=costs.shape,
                         copy=False)


@njit(cache=True)
def _merge(p1, i1, d1, p2, i2, d2, start, out_idx, out_data, counts):
    """Merge two sorted CSR graphs row by row, row r from ``start[r]`` on (a pair in both keeps
    the first's value); ``counts[r]``: the merged row's length."""
    for r in range(counts.shape[0]):
        a, a1, b, b1 = p1[r], p1[r + 1], p2[r], p2[r + 1]
        o = start[r]
        while a < a1 or b < b1:
            if b == b1 or (a < a1 and i1[a] <= i2[b]):
                if b < b1 and i1[a] == i2[b]:
                    b += 1
                out_idx[o] = i1[a]
                out_data[o] = d1[a]
                a += 1
            else:
                out_idx[o] = i2[b]
                out_data[o] = d2[b]
                b += 1
            o += 1
        counts[r] = o - start[r]


# -------------------------------------------------------------------------------- HDF5
_ROW_ARRAYS = ("row_kth", "row_kth_ip", "row_sq")
_COL_ARRAYS = ("col_kth", "col_kth_ip", "col_sq")


def write_candidates(path: str | os.PathLike, graph: CandidateGraph, attrs: dict) -> None:
    """Store the graph in HDF5 (CSR arrays ``indptr``, ``indices``, ``data`` plus the bound
    vectors), atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        g = graph.costs
        h5.create_dataset("indptr", data=g.indptr.astype(np.int64))
        h5.create_dataset("indices", data=g.indices, chunks=True)
        h5.create_dataset("data", data=g.data.astype(np.float32), chunks=True)
        for name in _ROW_ARRAYS + _COL_ARRAYS:
            h5.create_dataset(name, data=np.asarray(getattr(graph, name), dtype=np.float64))
        n_r, n_c = graph.shape
        h5.attrs.update({"format": FORMAT, "n_rows": n_r, "n_cols": n_c, "k": graph.k,
                         "nnz": graph.nnz})
        for key, val in attrs.items():
            h5.attrs[key] = val


def read_candidates(path: str | os.PathLike) -> CandidateGraph:
    """Read and validate a graph written by :func:`write_candidates`."""
    try:
        with h5py.File(path, "r") as h5:
            fmt = h5.attrs.get("format")
            if fmt != FORMAT:
                raise SAEMatchError(f"{path}: not a candidate-graph file of format {FORMAT} "
                                    f"(found {fmt!r}; delete it and rerun to rebuild it)")
            n_r, n_c, k = (int(h5.attrs[a]) for a in ("n_rows", "n_cols", "k"))
            indptr, indices, data = h5["indptr"][()], h5["indices"][()], h5["data"][()]
            arrays = {name: h5[name][()] for name in _ROW_ARRAYS + _COL_ARRAYS}
    except SAEMatchError:
        raise
    except Exception as exc:
        raise SAEMatchError(f"{path}: cannot read candidate graph ({exc})") from exc
    bad = (indptr.shape != (n_r + 1,) or indptr[0] != 0 or np.any(np.diff(indptr) < 0)
           or indptr[-1] != len(indices) or len(data) != len(indices)
           or (len(indices) and (indices.min() < 0 or indices.max() >= n_c))
           or any(arrays[a].shape != (n_r,) for a in _ROW_ARRAYS)
           or any(arrays[a].shape != (n_c,) for a in _COL_ARRAYS))
    if bad:
        raise SAEMatchError(f"{path}: inconsistent CSR arrays for a {n_r} x {n_c} graph")
    if not np.isfinite(data).all() or not all(np.isfinite(a).all() for a in arrays.values()):
        raise SAEMatchError(f"{path}: candidate graph holds non-finite values")
    costs = sp.csr_matrix((data.astype(np.float32), indices, indptr), shape=(n_r, n_c))
    return CandidateGraph(costs=costs, k=k, **arrays)
