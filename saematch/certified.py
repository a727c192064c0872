"""Exact assignment at any width: sparse candidates plus a dual optimality certificate.

After Lee and Orlin (1993). The dense problem ``min_P sum_i c[i, P(i)]``,
``c_ij = ||a_i - b_j||^2``, is solved on a sparse *candidate graph* and then proved optimal
for all n x n pairs:

1. **Candidates** (:func:`candidate_graph`): one blockwise GEMM pass
   (:func:`saematch.costs.cost_blocks`, CUDA when present) keeps for every row and every column its
   ``k`` smallest costs, and also its ``k`` best pairs by ``c_ij - |a_i|^2 - |b_j|^2 = -2 a_i.b_j``
   (features without a counterpart are near-orthogonal to everything, so by raw cost they all pile
   onto the few smallest-norm partners; by inner product they do not). The k-th values are kept:
   for every pair (i, j) outside the graph ``c_ij >= max(row_kth[i], col_kth[j])`` and
   ``c_ij >= |a_i|^2 + |b_j|^2 + max(row_kth_ip[i], col_kth_ip[j])``.
2. **Sparse solve**: shortest augmenting paths (Dijkstra on reduced costs with a binary heap; the
   dual update of scipy's ``linear_sum_assignment``), compiled with numba. It keeps dual potentials
   with ``c_ij - u_i - v_j >= 0`` on every graph edge and ``= 0`` on the matching; when edges are
   added it restarts warm from the previous ``v`` (``u_i = min_j c_ij - v_j``, matches that are no
   longer tight are dropped). If the graph has no perfect matching (k too small), the roots of the
   failed searches are streamed and get their best pairs by reduced cost; repeated until it has.
3. **Certificate** (:func:`check_duals`): every pair must have ``c_ij - u_i - v_j >=
   -tol (|a_i|^2 + |b_j|^2)``. Row- and column-level bounds (the k-th values above, and for rows
   streamed in an earlier round the margin then observed, corrected for how far the duals moved)
   settle most rows for free; for the rest, pair-level bounds pick the columns that still need
   checking, and only those row x column blocks go through the GEMM. Each streamed row adds its
   ``add_per_row`` best pairs by reduced cost (all violations among them) to the graph; then the
   solve is warm-restarted. A round streams at most ``rows_per_round`` rows, worst bounds first.

Tolerance: a cost is a float32 rounding of ``|a|^2 + |b|^2 - 2 a.b`` computed with a float32 GEMM,
so it is defined only to about one float32 ulp of ``|a|^2 + |b|^2`` (the same pair computed in
blocks of another shape differs by that much). The default ``tol`` = 2**-21 (4 ulps of that scale,
per pair) is the resolution of the data, not of the method: no violation is ever accepted that is
larger than what recomputing a cost can change. Whatever the tolerance, ``gap`` is an honest bound:
``objective - LB`` with the Lagrangian lower bound
``LB = sum(u) + sum(v) + sum_i min(0, min_j (c_ij - u_i - v_j))`` (row minima from the graph, the
streamed blocks, or the bounds), valid for any duals; it is ``sum(u) + sum(v)`` when every reduced
cost is non-negative.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field

import h5py
import numpy as np
import scipy.sparse as sp
import torch

from .assign import Assignment
from .atomic import atomic_path
from .costs import cost_blocks
from .device import pick_device
from .errors import SAEMatchError

try:  # the solver loops are compiled; without numba they run (slowly) as plain Python
    from numba import njit
except ImportError:  # pragma: no cover - numba is a declared dependency
    def njit(*args, **kwargs):
        if args and callable(args[0]):
            return args[0]
        return lambda f: f

TOL = 2.0 ** -21  # default relative tolerance tau of the certificate
_INF = np.inf


# ------------------------------------------------------------------------ candidate graph
@dataclass
class CandidateGraph:
    """Sparse candidate pairs with the bounds that cover every pair left out.

    ``costs`` is an n x n CSR matrix whose *stored* entries are the candidate pairs (explicit zeros
    included: a zero cost is an edge). For any pair (i, j) not stored:
    ``c_ij >= max(row_kth[i], col_kth[j])`` and
    ``c_ij >= row_sq[i] + col_sq[j] + max(row_kth_ip[i], col_kth_ip[j])``.
    """

    costs: sp.csr_matrix  # [n, n] float32
    row_kth: np.ndarray  # [n] float64
    col_kth: np.ndarray  # [n] float64
    row_kth_ip: np.ndarray  # [n] float64, bound on c_ij - |a_i|^2 - |b_j|^2
    col_kth_ip: np.ndarray  # [n] float64
    row_sq: np.ndarray  # [n] float64, |a_i|^2 as the cost GEMM computes it
    col_sq: np.ndarray  # [n] float64, |b_j|^2
    k: int

    @property
    def n(self) -> int:
        return self.costs.shape[0]

    @property
    def nnz(self) -> int:
        return int(self.costs.nnz)


def _sqnorms(X: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Row squared norms in float64 (what ``cost_blocks`` adds), without a float64 copy of X."""
    out = np.empty(X.shape[0])
    for s in range(0, X.shape[0], chunk):
        x = torch.from_numpy(X[s:s + chunk])
        out[s:s + chunk] = (x.double() ** 2).sum(1).numpy()
    return out


def _as_f32(X: np.ndarray, name: str) -> np.ndarray:
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise SAEMatchError(f"{name} must be 2-D [n, D], got shape {X.shape}")
    return X


def _check_pair(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    A, B = _as_f32(A, "A"), _as_f32(B, "B")
    if A.shape != B.shape:
        raise SAEMatchError(f"A and B must have the same shape [n, D], got {A.shape} and {B.shape}")
    return A, B


def _tiling(n_cols: int, D: int, block: int, dev: torch.device,
            mem_gib: float | None) -> tuple[int, int]:
    """Column tile and row block sizes so that one tile's temporaries stay within the budget.

    ``cost_blocks`` makes a float64 copy of its B argument (16 bytes per element at peak) and
    about 24 bytes per element of each [block, tile] cost block; we add about 16 more.
    """
    if mem_gib is None:
        if dev.type == "cuda":
            free, _ = torch.cuda.mem_get_info(dev)
            budget = free / 4
        else:
            budget = 2 ** 30
    else:
        budget = mem_gib * 2 ** 30
    tile = int(min(n_cols, max(1024, budget // (16 * D))))
    rows = int(min(block, max(128, budget // (40 * tile))))
    return tile, rows


def _col_tiles(n_cols: int, tile: int):
    for c0 in range(0, n_cols, tile):
        yield c0, min(c0 + tile, n_cols)


def _merge_smallest(vals: torch.Tensor, idx: torch.Tensor, extra: torch.Tensor | None,
                    nv: torch.Tensor, ni: torch.Tensor, ne: torch.Tensor | None, k: int):
    """Keep the k smallest of two [r, *] candidate lists (values, indices, optional payload)."""
    cv = torch.cat([vals, nv], 1)
    kk = min(k, cv.shape[1])
    top, pos = torch.topk(cv, kk, dim=1, largest=False)
    ci = torch.gather(torch.cat([idx, ni], 1), 1, pos)
    ce = None if extra is None else torch.gather(torch.cat([extra, ne], 1), 1, pos)
    return top, ci, ce


def candidate_graph(A: np.ndarray, B: np.ndarray, k: int = 16, *, block: int = 4096,
                    device: str = "auto", mem_gib: float | None = None) -> CandidateGraph:
    """Candidate pairs by one blockwise GEMM pass: for every row and every column its ``k``
    smallest costs and its ``k`` largest inner products, with the k-th values as bounds.

    Memory is O(n k) plus one column tile of temporaries (``mem_gib``, default 1 GiB on CPU and a
    quarter of the free GPU memory on CUDA).
    """
    A, B = _check_pair(A, B)
    n, D = A.shape
    if k < 1:
        raise SAEMatchError(f"k must be >= 1, got {k}")
    k = min(k, n)
    dev = pick_device(device)
    na, nb = _sqnorms(A), _sqnorms(B)
    tna = torch.from_numpy(na).to(dev)  # float64: the inner-product ranks are exact enough
    tnb = torch.from_numpy(nb).to(dev)  # that no slack is needed in the bounds
    tile, rows_per_block = _tiling(n, D, block, dev, mem_gib)
    f32, i64 = dict(dtype=torch.float32, device=dev), dict(dtype=torch.int64, device=dev)
    # per-row running lists: by cost (value = cost) and by inner product (value = c - |b|^2,
    # payload = cost). The row term |a_i|^2 is constant along a row and does not change ranks.
    rv = torch.full((n, k), _INF, **f32)
    ri = torch.zeros((n, k), **i64)
    pv = torch.full((n, k), _INF, dtype=torch.float64, device=dev)
    pi = torch.zeros((n, k), **i64)
    pc = torch.zeros((n, k), **f32)
    col_parts = []  # (cols, rows_by_cost[k, w], cost[k, w], rows_by_ip, cost_ip, kth, kth_ip)
    for c0, c1 in _col_tiles(n, tile):
        w = c1 - c0
        cv = torch.full((w, k), _INF, **f32)
        ci = torch.zeros((w, k), **i64)
        qv = torch.full((w, k), _INF, dtype=torch.float64, device=dev)
        qi = torch.zeros((w, k), **i64)
        qc = torch.zeros((w, k), **f32)
        for rows, c in cost_blocks(A, B[c0:c1], rows_per_block, device):
            r0 = rows.start
            kk = min(k, w)
            v, j = torch.topk(c, kk, dim=1, largest=False)
            rv[rows], ri[rows], _ = _merge_smallest(rv[rows], ri[rows], None, v, j + c0, None, k)
            s = c.double() - tnb[c0:c1][None, :]
            v, j = torch.topk(s, kk, dim=1, largest=False)
            del s
            pv[rows], pi[rows], pc[rows] = _merge_smallest(pv[rows], pi[rows], pc[rows], v, j + c0,
                                                           torch.gather(c, 1, j), k)
            ct = c.T.contiguous()
            kr = min(k, ct.shape[1])
            v, j = torch.topk(ct, kr, dim=1, largest=False)
            cv, ci, _ = _merge_smallest(cv, ci, None, v, j + r0, None, k)
            ctd = ct.double() - tna[rows][None, :]
            del ct
            v, j = torch.topk(ctd, kr, dim=1, largest=False)
            del ctd
            qv, qi, qc = _merge_smallest(qv, qi, qc, v, j + r0, torch.gather(c.T, 1, j), k)
            del c
        col_parts.append((c0, c1, ci.cpu(), cv.cpu(), qi.cpu(), qc.cpu(), qv.cpu()))
    # assemble the union (rows, cols, cost)
    rows_all = [np.repeat(np.arange(n), k), np.repeat(np.arange(n), k)]
    cols_all = [ri.cpu().numpy().ravel(), pi.cpu().numpy().ravel()]
    cost_all = [rv.cpu().numpy().ravel(), pc.cpu().numpy().ravel()]
    col_kth = np.empty(n)
    col_kth_ip = np.empty(n)
    for c0, c1, ci_, cv_, qi_, qc_, qv_ in col_parts:
        cols = np.repeat(np.arange(c0, c1), k)
        rows_all += [ci_.numpy().ravel(), qi_.numpy().ravel()]
        cols_all += [cols, cols]
        cost_all += [cv_.numpy().ravel(), qc_.numpy().ravel()]
        col_kth[c0:c1] = cv_[:, -1].double().numpy()
        col_kth_ip[c0:c1] = qv_[:, -1].double().numpy() - nb[c0:c1]
    costs = _build_csr(np.concatenate(rows_all), np.concatenate(cols_all),
                       np.concatenate(cost_all), n)
    return CandidateGraph(costs=costs, row_kth=rv[:, -1].double().cpu().numpy(), col_kth=col_kth,
                          row_kth_ip=pv[:, -1].double().cpu().numpy() - na, col_kth_ip=col_kth_ip,
                          row_sq=na, col_sq=nb, k=k)


def _build_csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int) -> sp.csr_matrix:
    """CSR from COO keeping the first value of duplicate pairs (never summing them)."""
    keys = rows.astype(np.int64) * n + cols.astype(np.int64)
    keys, first = np.unique(keys, return_index=True)
    idx_dtype = np.int32 if max(n, len(keys)) < 2 ** 31 else np.int64
    indices = (keys % n).astype(idx_dtype)
    counts = np.bincount(keys // n, minlength=n)
    indptr = np.zeros(n + 1, dtype=idx_dtype)
    np.cumsum(counts, out=indptr[1:])
    data = np.asarray(vals, dtype=np.float32)[first]
    return sp.csr_matrix((data, indices, indptr), shape=(n, n), copy=False)


def _add_edges(costs: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray,
               vals: np.ndarray) -> sp.csr_matrix:
    """The graph with extra pairs (pairs already present keep their stored cost)."""
    coo_r = np.repeat(np.arange(costs.shape[0]), np.diff(costs.indptr))
    return _build_csr(np.concatenate([coo_r, rows]), np.concatenate([costs.indices, cols]),
                      np.concatenate([costs.data, vals]), costs.shape[0])


# -------------------------------------------------------------------------------- HDF5
_GRAPH_ARRAYS = ("row_kth", "col_kth", "row_kth_ip", "col_kth_ip", "row_sq", "col_sq")


def write_candidates(path: str | os.PathLike, graph: CandidateGraph, attrs: dict) -> None:
    """Store the graph in HDF5 (CSR arrays ``indptr``, ``indices``, ``data`` plus the bound
    vectors), atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        g = graph.costs
        h5.create_dataset("indptr", data=g.indptr.astype(np.int64))
        h5.create_dataset("indices", data=g.indices, chunks=True)
        h5.create_dataset("data", data=g.data.astype(np.float32), chunks=True)
        for name in _GRAPH_ARRAYS:
            h5.create_dataset(name, data=np.asarray(getattr(graph, name), dtype=np.float64))
        h5.attrs.update({"format": "saematch-candidates-v1", "n": graph.n, "k": graph.k,
                         "nnz": graph.nnz})
        for key, val in attrs.items():
            h5.attrs[key] = val


def read_candidates(path: str | os.PathLike) -> CandidateGraph:
    """Read and validate a graph written by :func:`write_candidates`."""
    try:
        with h5py.File(path, "r") as h5:
            if h5.attrs.get("format") != "saematch-candidates-v1":
                raise SAEMatchError(f"{path}: not a candidate-graph file")
            n, k = int(h5.attrs["n"]), int(h5.attrs["k"])
            indptr, indices, data = h5["indptr"][()], h5["indices"][()], h5["data"][()]
            arrays = {name: h5[name][()] for name in _GRAPH_ARRAYS}
    except SAEMatchError:
        raise
    except Exception as exc:
        raise SAEMatchError(f"{path}: cannot read candidate graph ({exc})") from exc
    bad = (indptr.shape != (n + 1,) or indptr[0] != 0 or np.any(np.diff(indptr) < 0)
           or indptr[-1] != len(indices) or len(data) != len(indices)
           or (len(indices) and (indices.min() < 0 or indices.max() >= n))
           or any(a.shape != (n,) for a in arrays.values()))
    if bad:
        raise SAEMatchError(f"{path}: inconsistent CSR arrays for n={n}")
    if not np.isfinite(data).all() or not all(np.isfinite(a).all() for a in arrays.values()):
        raise SAEMatchError(f"{path}: candidate graph holds non-finite values")
    costs = sp.csr_matrix((data.astype(np.float32), indices, indptr), shape=(n, n))
    return CandidateGraph(costs=costs, k=k, **arrays)


# ------------------------------------------------------------------- sparse LAP (numba)
@njit(cache=True)
def _heap_push(hk, hc, size, key, col):
    pos = size
    while pos > 0:
        parent = (pos - 1) >> 1
        if hk[parent] <= key:
            break
        hk[pos] = hk[parent]
        hc[pos] = hc[parent]
        pos = parent
    hk[pos] = key
    hc[pos] = col
    return size + 1


@njit(cache=True)
def _heap_pop(hk, hc, size):
    key = hk[0]
    col = hc[0]
    size -= 1
    if size > 0:
        lk = hk[size]
        lc = hc[size]
        pos = 0
        while True:
            child = 2 * pos + 1
            if child >= size:
                break
            if child + 1 < size and hk[child + 1] < hk[child]:
                child += 1
            if hk[child] >= lk:
                break
            hk[pos] = hk[child]
            hc[pos] = hc[child]
            pos = child
        hk[pos] = lk
        hc[pos] = lc
    return key, col, size


@njit(cache=True)
def _prepare(indptr, indices, cost, u, v, col4row, row4col, cold):
    """Make (u, v) dual feasible on the graph and keep only tight matches; greedy start.

    Cold: ``v_j = min_i c_ij`` (column reduction). Always: ``u_i = min_j (c_ij - v_j)``; a row
    whose matched edge is no longer an argmin is unmatched; free rows take a free argmin column.
    """
    n = u.shape[0]
    if cold:
        for j in range(v.shape[0]):
            v[j] = _INF
        for i in range(n):
            for e in range(indptr[i], indptr[i + 1]):
                j = indices[e]
                if cost[e] < v[j]:
                    v[j] = cost[e]
        for j in range(v.shape[0]):
            if v[j] == _INF:
                v[j] = 0.0
    best_col = np.full(n, -1, np.int64)
    for i in range(n):
        best = _INF
        bj = -1
        mine = _INF
        j0 = col4row[i]
        for e in range(indptr[i], indptr[i + 1]):
            j = indices[e]
            r = cost[e] - v[j]
            if r < best:
                best = r
                bj = j
            if j == j0:
                mine = r
        u[i] = best
        best_col[i] = bj
        if j0 != -1 and not (mine <= best):
            row4col[j0] = -1
            col4row[i] = -1
    for i in range(n):
        if col4row[i] == -1:
            j = best_col[i]
            if j != -1 and row4col[j] == -1:
                col4row[i] = j
                row4col[j] = i


@njit(cache=True)
def _augment_all(indptr, indices, cost, u, v, col4row, row4col, stuck):
    """Shortest augmenting path (Dijkstra on reduced costs, binary heap) from every free row.

    Dual update as in scipy's ``linear_sum_assignment`` (Crouse 2016), so ``c - u - v >= 0`` on
    every edge and ``= 0`` on the matching. A search that runs out of columns flags its root in
    ``stuck`` (the graph has no perfect matching) and marks the columns it reached as dead: no
    free column is reachable from them while the matching stays as it is, so later searches skip
    them. Edges into dead columns may then lose dual feasibility, which is why the caller must
    add edges and call ``_prepare`` again whenever a search failed. Returns
    (number of failed searches, number of Dijkstra steps).
    """
    n = u.shape[0]
    m = v.shape[0]
    spc = np.full(m, _INF)
    pred = np.full(m, -1, np.int64)
    scanned = np.zeros(m, np.bool_)
    dead = np.zeros(m, np.bool_)
    touched = np.empty(m, np.int64)
    sr = np.empty(n, np.int64)
    sc = np.empty(m, np.int64)
    cap = indices.shape[0] + 1
    hk = np.empty(cap, np.float64)
    hc = np.empty(cap, np.int64)
    nfail = 0
    steps = 0
    for cur in range(n):
        if col4row[cur] != -1:
            continue
        nt = 0
        nsr = 0
        nsc = 0
        hs = 0
        min_val = 0.0
        i = cur
        sink = -1
        while True:
            sr[nsr] = i
            nsr += 1
            ui = u[i]
            for e in range(indptr[i], indptr[i + 1]):
                j = indices[e]
                if scanned[j] or dead[j]:
                    continue
                r = min_val + cost[e] - ui - v[j]
                if r < spc[j]:
                    if spc[j] == _INF:
                        touched[nt] = j
                        nt += 1
                    spc[j] = r
                    pred[j] = i
                    hs = _heap_push(hk, hc, hs, r, j)
            j = -1
            while hs > 0:
                key, jj, hs = _heap_pop(hk, hc, hs)
                if scanned[jj] or key > spc[jj]:
                    continue
                j = jj
                break
            if j == -1:
                break
            steps += 1
            min_val = spc[j]
            scanned[j] = True
            sc[nsc] = j
            nsc += 1
            if row4col[j] == -1:
                sink = j
                break
            i = row4col[j]
        if sink == -1:
            nfail += 1
            stuck[cur] = True
            for t in range(nsc):
                dead[sc[t]] = True
        else:
            u[cur] += min_val
            for t in range(1, nsr):
                i = sr[t]
                u[i] += min_val - spc[col4row[i]]
            for t in range(nsc):
                j = sc[t]
                v[j] -= min_val - spc[j]
            j = sink
            while True:
                i = pred[j]
                row4col[j] = i
                tmp = col4row[i]
                col4row[i] = j
                j = tmp
                if i == cur:
                    break
        for t in range(nt):
            j = touched[t]
            spc[j] = _INF
            scanned[j] = False
            pred[j] = -1
    return nfail, steps


@dataclass
class _State:
    u: np.ndarray
    v: np.ndarray
    col4row: np.ndarray
    row4col: np.ndarray
    cold: bool = True


def _solve(costs: sp.csr_matrix, st: _State) -> tuple[int, np.ndarray, int]:
    indptr = costs.indptr.astype(np.int64)
    data = costs.data.astype(np.float64)
    _prepare(indptr, costs.indices, data, st.u, st.v, st.col4row, st.row4col, st.cold)
    st.cold = False
    stuck = np.zeros(costs.shape[0], dtype=np.bool_)
    nfail, steps = _augment_all(indptr, costs.indices, data, st.u, st.v, st.col4row, st.row4col,
                                stuck)
    return int(nfail), stuck, int(steps)


# -------------------------------------------------------------------------- certificate
def _min_max_plus(r: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``out[i] = min_j (max(r[i], s[j]) + w[j])`` in O((n + m) log m); +inf when s is empty."""
    if len(s) == 0:
        return np.full(len(r), _INF)
    order = np.argsort(s, kind="stable")
    ss, ws = s[order], w[order]
    prefix = np.minimum.accumulate(ws)  # min w over s_j <= r_i
    suffix = np.minimum.accumulate((ss + ws)[::-1])[::-1]  # min (s_j + w_j) over s_j > r_i
    p = np.searchsorted(ss, r, side="right")
    t1 = np.where(p > 0, r + prefix[np.maximum(p - 1, 0)], _INF)
    t2 = np.where(p < len(ss), suffix[np.minimum(p, len(ss) - 1)], _INF)
    return np.minimum(t1, t2)


@dataclass
class _Snapshots:
    """Margins of streamed rows: at duals (us[i], vs[sid[i]]) every pair (i, j) left out of the
    graph had ``c_ij - us_i - vs_j >= rho_i``; so at duals (u, v) its reduced cost is at least
    ``rho_i + us_i - u_i + vs_j - v_j``. (The certificate stores its shifted duals here.)"""

    rho: np.ndarray
    us: np.ndarray
    sid: np.ndarray
    vs: list = field(default_factory=list)

    @classmethod
    def empty(cls, n: int) -> _Snapshots:
        return cls(rho=np.full(n, -_INF), us=np.zeros(n), sid=np.full(n, -1, dtype=np.int64))

    def row_bound(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        out = np.full(len(u), -_INF)
        for t, vs in enumerate(self.vs):
            sel = self.sid == t
            if sel.any():
                out[sel] = self.rho[sel] + self.us[sel] - u[sel] + float(np.min(vs - v))
        return out

    def record(self, rows: np.ndarray, rho: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
        self.rho[rows] = rho
        self.us[rows] = u[rows]
        self.sid[rows] = len(self.vs)
        self.vs.append(v.copy())


@dataclass
class DualCheck:
    """Outcome of one certificate pass for duals (u, v) on a candidate graph."""

    ok: bool  # complete, and no pair anywhere below the tolerance
    complete: bool  # False if the time limit stopped the streaming
    violations: int  # pairs outside the graph found with c - u - v < -tau (|a|^2 + |b|^2)
    graph_violations: int  # graph edges below the tolerance (0 for duals from the solver)
    lower_bound: float  # Lagrangian bound sum u + sum v + sum_i min(0, row minimum)
    rows_streamed: int
    pairs_streamed: int  # GEMM work of this pass, in (row, column) pairs
    min_reduced_cost: float  # lower bound of the smallest reduced cost of any pair
    new_rows: np.ndarray = field(repr=False, default=None)  # pairs to add (best by reduced cost)
    new_cols: np.ndarray = field(repr=False, default=None)
    new_costs: np.ndarray = field(repr=False, default=None)
    new_violations: int = 0  # how many of those pairs violate


def _bounds(graph: CandidateGraph, u: np.ndarray, v: np.ndarray,
            snaps: _Snapshots | None) -> tuple[np.ndarray, np.ndarray]:
    """Row- and column-wise lower bounds of ``c_ij - u_i - v_j`` over pairs outside the graph."""
    r, s, rp, sq = graph.row_kth, graph.col_kth, graph.row_kth_ip, graph.col_kth_ip
    na, nb = graph.row_sq, graph.col_sq
    row = np.maximum(_min_max_plus(r, s, -v) - u, na - u + _min_max_plus(rp, sq, nb - v))
    if snaps is not None:
        row = np.maximum(row, snaps.row_bound(u, v))
    col = np.maximum(_min_max_plus(s, r, -u) - v, nb - v + _min_max_plus(sq, rp, na - u))
    return np.maximum(row, float(np.min(col))), col


def _screen(graph: CandidateGraph, R: np.ndarray, u: np.ndarray, v: np.ndarray,
            sa: np.ndarray, sb: np.ndarray, snaps: _Snapshots | None, dev: torch.device,
            group_rows: int):
    """Pair-level bounds for rows R (ordered), grouped: yields (rows, cols, outside) where cols are
    the columns with some pair below the tolerance in the group (None: all), and lower bounds of
    each row's reduced costs over the pairs outside the graph and outside cols, for the given
    (shifted) duals and for the unshifted ones ``(u + sa, v + sb)``."""
    n = graph.n
    t = {name: torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).to(dev) for name, x in
         dict(r=graph.row_kth, s=graph.col_kth, rp=graph.row_kth_ip, sq=graph.col_kth_ip,
              na=graph.row_sq, nb=graph.col_sq, u=u, v=v, sa=sa, sb=sb).items()}
    vs = [torch.from_numpy(x).to(dev) for x in (snaps.vs if snaps is not None else [])]
    chunk = int(max(1, min(group_rows, 2 ** 24 // max(n, 1))))

    def pair_bound(rows: np.ndarray) -> torch.Tensor:
        i = torch.from_numpy(rows).to(dev)
        pb = torch.maximum(t["r"][i, None], t["s"][None, :])
        pb2 = torch.maximum(t["rp"][i, None], t["sq"][None, :])
        pb2 += t["na"][i, None]
        pb2 += t["nb"][None, :]
        torch.maximum(pb, pb2, out=pb)
        del pb2
        pb -= t["u"][i, None]
        pb -= t["v"][None, :]
        if snaps is not None:
            for sid in np.unique(snaps.sid[rows]):
                if sid < 0:
                    continue
                loc = np.flatnonzero(snaps.sid[rows] == sid)
                li = torch.from_numpy(loc).to(dev)
                gi = i[li]
                b3 = (torch.from_numpy(snaps.rho[rows[loc]] + snaps.us[rows[loc]]).to(dev)
                      - t["u"][gi])[:, None] + (vs[sid] - t["v"])[None, :]
                pb[li] = torch.maximum(pb[li], b3)
        sub = graph.costs[rows]
        er = np.repeat(np.arange(len(rows)), np.diff(sub.indptr))
        ec = torch.from_numpy(sub.indices.astype(np.int64)).to(dev)
        pb[torch.from_numpy(er).to(dev), ec] = _INF
        return pb

    for g0 in range(0, len(R), group_rows):
        rows_g = R[g0:g0 + group_rows]
        fail = torch.zeros(n, dtype=torch.bool, device=dev)
        for c0 in range(0, len(rows_g), chunk):
            rows = rows_g[c0:c0 + chunk]
            pb = pair_bound(rows)
            fail |= (pb < 0).any(0)
            del pb
        cols = torch.nonzero(fail).flatten().cpu().numpy()
        if len(cols) > 0.8 * n:  # stream every column: nothing is left outside
            inf = np.full(len(rows_g), _INF)
            yield rows_g, None, inf, inf
            continue
        outside = np.empty(len(rows_g))  # for the given (shifted) duals, >= 0 by construction
        outside_u = np.empty(len(rows_g))  # for the unshifted duals (ut + tau na, vt + tau nb)
        for c0 in range(0, len(rows_g), chunk):
            rows = rows_g[c0:c0 + chunk]
            pb = pair_bound(rows)
            pb[:, fail] = _INF
            outside[c0:c0 + len(rows)] = pb.min(1).values.cpu().numpy()
            pb -= t["sa"][torch.from_numpy(rows).to(dev), None]
            pb -= t["sb"][None, :]
            outside_u[c0:c0 + len(rows)] = pb.min(1).values.cpu().numpy()
            del pb
        yield rows_g, cols, outside, outside_u


def _stream_rows(A, B, graph: CandidateGraph, R: np.ndarray, cols: np.ndarray | None,
                 u: np.ndarray, v: np.ndarray, sa: np.ndarray, sb: np.ndarray, m: int,
                 block: int, device: str,
                 mem_gib: float | None, deadline: float | None):
    """Exact reduced costs of rows R x cols (cols None = all) outside the graph, by GEMM.

    Returns per row of R: the minimum reduced cost, its m smallest *shifted* reduced costs
    ``c - u - v + sa_i + sb_j`` (the tolerance) with their columns and costs, the number of pairs
    below the tolerance (shifted value < 0), and whether it finished.
    """
    n, D = A.shape
    dev = pick_device(device)
    ncols = n if cols is None else len(cols)
    tile, rows_per_block = _tiling(ncols, D, block, dev, mem_gib)
    AR = A if np.array_equal(R, np.arange(n)) else np.ascontiguousarray(A[R])
    tu = torch.from_numpy(u[R]).to(dev)
    tv = torch.from_numpy(v).to(dev)
    tta = torch.from_numpy(sa[R]).to(dev)
    ttb = torch.from_numpy(sb).to(dev)
    mm = min(m, ncols)
    f64, i64 = dict(dtype=torch.float64, device=dev), dict(dtype=torch.int64, device=dev)
    best_rc = torch.full((len(R), mm), _INF, **f64)
    best_j = torch.zeros((len(R), mm), **i64)
    best_c = torch.zeros((len(R), mm), dtype=torch.float32, device=dev)
    row_min = torch.full((len(R),), _INF, **f64)
    nviol = 0
    sub = graph.costs[R]  # graph edges of the streamed rows, masked out below
    e_row = np.repeat(np.arange(len(R)), np.diff(sub.indptr))
    e_col = sub.indices.astype(np.int64)
    if cols is not None:
        pos = np.full(n, -1, dtype=np.int64)
        pos[cols] = np.arange(len(cols))
        keep = pos[e_col] >= 0
        e_row, e_col = e_row[keep], pos[e_col[keep]]
    order = np.argsort(e_col, kind="stable")
    e_row, e_col = e_row[order], e_col[order]
    complete = True
    for c0, c1 in _col_tiles(ncols, tile):
        if deadline is not None and time.monotonic() > deadline:
            complete = False
            break
        Bt = B[c0:c1] if cols is None else np.ascontiguousarray(B[cols[c0:c1]])
        gcols = torch.arange(c0, c1, device=dev) if cols is None else \
            torch.from_numpy(cols[c0:c1]).to(dev)
        lo, hi = np.searchsorted(e_col, [c0, c1])
        er, ec = e_row[lo:hi], e_col[lo:hi] - c0
        for rows, c in cost_blocks(AR, Bt, rows_per_block, device):
            rc = c.double()
            rc -= tu[rows][:, None]
            rc -= tv[gcols][None, :]
            sel = (er >= rows.start) & (er < rows.stop)
            if sel.any():
                rc[torch.from_numpy(er[sel] - rows.start).to(dev),
                   torch.from_numpy(ec[sel]).to(dev)] = _INF
            row_min[rows] = torch.minimum(row_min[rows], rc.min(1).values)
            rc += tta[rows][:, None]
            rc += ttb[gcols][None, :]
            nviol += int((rc < 0).sum())
            kk = min(mm, c1 - c0)
            top, j = torch.topk(rc, kk, dim=1, largest=False)
            best_rc[rows], best_j[rows], best_c[rows] = _merge_smallest(
                best_rc[rows], best_j[rows], best_c[rows], top, gcols[j], torch.gather(c, 1, j),
                mm)
            del rc, c
    return (row_min.cpu().numpy(), best_rc.cpu().numpy(), best_j.cpu().numpy(),
            best_c.cpu().numpy(), nviol, complete)


def _check(A, B, graph: CandidateGraph, u: np.ndarray, v: np.ndarray, tau: float, *,
           snaps: _Snapshots | None, m: int, block: int, device: str, mem_gib: float | None,
           deadline: float | None, rows_only: np.ndarray | None = None,
           group_rows: int = 4096, max_rows: int | None = None) -> DualCheck:
    """One certificate pass. A pair passes if ``c_ij - u_i - v_j >= -tau (|a_i|^2 + |b_j|^2) - eps``
    (eps: a float64 floor, 2**-40 of the largest dual or squared norm), i.e. if
    ``c_ij - ut_i - vt_j >= 0`` for the shifted duals ``ut = u - tau |a|^2 - eps/2``,
    ``vt = v - tau |b|^2 - eps/2``: decisions use (ut, vt), the lower bound uses (u, v).
    ``rows_only``: stream exactly these rows against all columns (to grow stuck rows)."""
    n = graph.n
    g = graph.costs
    na, nb = graph.row_sq, graph.col_sq
    # per-pair tolerance tau (|a_i|^2 + |b_j|^2) plus a float64 floor (zero vectors, dual drift)
    eps = 2.0 ** -40 * (np.max(np.abs(u)) + np.max(np.abs(v)) + np.max(na) + np.max(nb))
    sa, sb = tau * na + eps / 2, tau * nb + eps / 2
    ut, vt = u - sa, v - sb
    e_row = np.repeat(np.arange(n), np.diff(g.indptr))
    rc_e = g.data.astype(np.float64) - u[e_row] - v[g.indices]
    graph_viol = int((rc_e + sa[e_row] + sb[g.indices] < 0).sum())
    nonempty = np.diff(g.indptr) > 0
    cand_min = np.full(n, _INF)
    if len(rc_e):
        cand_min[nonempty] = np.minimum.reduceat(rc_e, g.indptr[:-1][nonempty].astype(np.int64))
    test_row, test_col = _bounds(graph, ut, vt, snaps)
    noncand = _bounds(graph, u, v, snaps)[0]  # unshifted, for the lower bound
    dev = pick_device(device)
    new_r, new_c, new_v = [], [], []
    nviol = new_viol = rows_streamed = pairs = 0
    complete = True
    truncated = False
    if rows_only is not None:
        R = np.asarray(rows_only, dtype=np.int64)
        inf = np.full(len(R), _INF)
        groups = [(R, None, inf, inf)]
    else:
        R = np.flatnonzero(test_row < 0) if np.any(test_col < 0) else np.zeros(0, np.int64)
        R = R[np.argsort(test_row[R], kind="stable")]  # worst first
        if max_rows is not None:
            group_rows = max(1, min(group_rows, max_rows))
        groups = _screen(graph, R, ut, vt, sa, sb, snaps, dev, group_rows)
    snap_rows, snap_rho = [], []
    for rows_g, cols_g, outside, outside_u in groups:
        if deadline is not None and time.monotonic() > deadline:
            complete = False
            break
        if cols_g is not None and len(cols_g) == 0:  # settled by the pair-level bounds
            noncand[rows_g] = np.maximum(noncand[rows_g], outside_u)
            snap_rows.append(rows_g)
            snap_rho.append(outside)
            continue
        if max_rows is not None and rows_streamed >= max_rows:
            truncated = True  # the rest waits for the next round, with better duals
            break
        row_min, brc, bj, bc, nv, done = _stream_rows(A, B, graph, rows_g, cols_g, u, v, sa, sb,
                                                      m, block, device, mem_gib, deadline)
        if not done:
            complete = False
            break
        rows_streamed += len(rows_g)
        pairs += len(rows_g) * (n if cols_g is None else len(cols_g))
        nviol += nv
        noncand[rows_g] = np.minimum(row_min, outside_u)
        finite = np.isfinite(brc)
        new_r.append(np.repeat(rows_g, brc.shape[1])[finite.ravel()])
        new_c.append(bj[finite])
        new_v.append(bc[finite])
        new_viol += int((brc[finite] < 0).sum())
        # margin left for the next rounds: every pair still outside the graph has shifted
        # reduced cost >= the largest one added (or the pair bounds, outside cols_g)
        kth = np.where(finite.all(1), np.max(np.where(finite, brc, -_INF), axis=1), _INF)
        snap_rows.append(rows_g)
        snap_rho.append(np.minimum(kth, outside))
    if snaps is not None and snap_rows:  # margins are for the shifted duals (ut, vt)
        snaps.record(np.concatenate(snap_rows), np.concatenate(snap_rho), ut, vt)
    row_lb = np.minimum(cand_min, noncand)
    lower = float(np.sum(u) + np.sum(v) + np.sum(np.minimum(0.0, row_lb)))
    ok = complete and not truncated and nviol == 0 and graph_viol == 0 and rows_only is None

    def cat(xs: list, dt) -> np.ndarray:
        return np.concatenate(xs) if xs else np.zeros(0, dt)

    return DualCheck(ok=ok, complete=complete, violations=nviol, graph_violations=graph_viol,
                     lower_bound=lower, rows_streamed=rows_streamed, pairs_streamed=pairs,
                     min_reduced_cost=float(np.min(row_lb)), new_rows=cat(new_r, np.int64),
                     new_cols=cat(new_c, np.int64), new_costs=cat(new_v, np.float32),
                     new_violations=new_viol)


def check_duals(A: np.ndarray, B: np.ndarray, graph: CandidateGraph, u: np.ndarray,
                v: np.ndarray, *, tol: float = TOL, block: int = 4096, device: str = "auto",
                mem_gib: float | None = None) -> DualCheck:
    """The optimality certificate on its own: is ``c_ij - u_i - v_j >= -tol (|a_i|^2 + |b_j|^2)``
    for *every* pair, in the graph or not? Streams only the rows and columns the bounds leave open.
    """
    A, B = _check_pair(A, B)
    return _check(A, B, graph, np.asarray(u, np.float64), np.asarray(v, np.float64), float(tol),
                  snaps=None, m=1, block=block, device=device, mem_gib=mem_gib, deadline=None)


# ------------------------------------------------------------------------------- driver
def certified_assign(A: np.ndarray, B: np.ndarray, *, k: int = 16, block: int = 4096,
                     device: str = "auto", time_limit: float | None = None,
                     tol: float | None = None, graph: CandidateGraph | None = None,
                     add_per_row: int | None = None, rows_per_round: int | None = None,
                     mem_gib: float | None = None, return_duals: bool = False) -> Assignment:
    """Exact assignment of A's rows to B's rows minimising ``sum ||a_i - b_P(i)||^2``, with proof.

    ``graph``: a precomputed :func:`candidate_graph` (e.g. from :func:`read_candidates`), built
    here with ``k`` otherwise. ``tol``: relative tolerance tau (default :data:`TOL` = 2**-21); a
    pair passes the certificate if ``c_ij - u_i - v_j >= -tau (|a_i|^2 + |b_j|^2)``.
    ``time_limit`` (seconds) is checked between GEMM tiles of the certificate and between rounds;
    the candidate pass and the solves that make the matching perfect always complete.
    Status ``optimal``: certified. ``time_limit``: stopped early. Either way ``gap`` is
    ``objective - LB`` for the best Lagrangian lower bound seen (``info['lower_bound']``).
    Each certificate round streams at most ``rows_per_round`` rows (default ``max(256, n/8)``),
    those with the most negative bounds first, and adds each streamed row's ``add_per_row``
    (default ``max(4k, 64)``) best pairs by reduced cost: duals improve between rounds, so rows
    streamed later are streamed fewer times. ``mem_gib`` bounds one tile's temporaries.
    ``return_duals=True`` returns ``(assignment, u, v)``. ``match_cost`` holds the graph's float32
    costs, which can differ from :func:`saematch.costs.cost_matrix` in the last ulp.
    """
    t_start = time.monotonic()
    deadline = None if time_limit is None else t_start + float(time_limit)
    A, B = _check_pair(A, B)
    n = A.shape[0]
    if n == 0:
        res = Assignment(perm=np.zeros(0, np.int64), match_cost=np.zeros(0), solver="certified")
        return (res, np.zeros(0), np.zeros(0)) if return_duals else res
    built = graph is None
    if built:
        graph = candidate_graph(A, B, k, block=block, device=device, mem_gib=mem_gib)
    elif graph.n != n:
        raise SAEMatchError(f"candidate graph is for n={graph.n}, but A and B have n={n}")
    t_cand = time.monotonic() - t_start
    tau = TOL if tol is None else float(tol)
    if not tau >= 0:
        raise SAEMatchError(f"tol must be >= 0, got {tol}")
    m = min(int(add_per_row) if add_per_row else max(4 * graph.k, 64), n)
    st = _State(u=np.zeros(n), v=np.zeros(n), col4row=np.full(n, -1, np.int64),
                row4col=np.full(n, -1, np.int64))
    snaps = _Snapshots.empty(n)
    costs = graph.costs
    stats = dict(rounds=0, grow_rounds=0, stuck_rows=0, rows_streamed=0, pairs_streamed=0,
                 edges_added=0, violations_added=0, violations_found=0, dijkstra_steps=0)
    t_solve = t_cert = 0.0
    best_lb = -_INF
    status = "optimal"
    kw = dict(m=m, block=block, device=device, mem_gib=mem_gib)
    max_rows = int(rows_per_round) if rows_per_round else max(256, -(-n // 8))
    while True:
        t0 = time.monotonic()
        nfail, stuck, steps = _solve(costs, st)
        t_solve += time.monotonic() - t0
        stats["rounds"] += 1
        stats["dijkstra_steps"] += steps
        t0 = time.monotonic()
        g = dataclasses.replace(graph, costs=costs)
        if nfail:  # no perfect matching on the graph: the failed roots get more candidates
            rows = np.flatnonzero(stuck)
            chk = _check(A, B, g, st.u, st.v, tau, snaps=snaps, deadline=None, rows_only=rows,
                         **kw)
            stats["grow_rounds"] += 1
            stats["stuck_rows"] += len(rows)
            if len(chk.new_rows) == 0:  # cannot happen: a row with all n pairs is never stuck
                raise SAEMatchError("certified_assign: stuck rows gained no new pairs")
        else:
            chk = _check(A, B, g, st.u, st.v, tau, snaps=snaps, deadline=deadline,
                         max_rows=max_rows, **kw)
            stats["violations_found"] += chk.violations
            best_lb = max(best_lb, chk.lower_bound)
            if not chk.ok and (not chk.complete
                               or (deadline is not None and time.monotonic() > deadline)):
                status = "time_limit"
            stats["violations_added"] += chk.new_violations
        stats["rows_streamed"] += chk.rows_streamed
        stats["pairs_streamed"] += chk.pairs_streamed
        t_cert += time.monotonic() - t0
        if not nfail and (chk.ok or status == "time_limit"):
            break
        if len(chk.new_rows):
            costs = _add_edges(costs, chk.new_rows, chk.new_cols, chk.new_costs)
            stats["edges_added"] += len(chk.new_rows)
    perm = st.col4row.copy()
    match = np.empty(n)
    for i0 in range(0, n, 1 << 16):  # cost of each matched pair, as stored in the graph
        rows = np.arange(i0, min(n, i0 + (1 << 16)))
        match[rows] = np.asarray(costs[rows, perm[rows]]).ravel()
    objective = float(match.sum())
    info = dict(k=graph.k, add_per_row=m, edges=int(costs.nnz), edges_candidates=graph.nnz,
                tol=tau, lower_bound=best_lb, t_candidates=t_cand, t_solve=t_solve,
                t_certify=t_cert, t_total=time.monotonic() - t_start, graph_built=built,
                passes=(1.0 if built else 0.0) + stats["pairs_streamed"] / float(n) ** 2,
                **stats)
    res = Assignment(perm=perm, match_cost=match, solver="certified", status=status,
                     gap=max(0.0, objective - best_lb), info=info)
    return (res, st.u.copy(), st.v.copy()) if return_duals else res
