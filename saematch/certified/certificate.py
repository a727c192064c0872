"""The optimality certificate: every one of the n_rows x n_cols pairs, in the graph or not, must
have ``c_ij - u_i - v_j >= -tau (|a_i|^2 + |b_j|^2)``.

Row- and column-level bounds (the candidate pass's k-th values, and for rows streamed in an
earlier round the margin then observed, corrected for how far the duals moved) settle most rows
for free; the rest are streamed whole, from the products kept in memory (:mod:`.products`),
through the GEMM, or through a bf16 or int8 GEMM (or its kept products) with a rigorous error bound
(:mod:`.screen`), with the
reduced costs selected in the same pass (numba, both cores). Each streamed row hands back its
best pairs by reduced cost (all violations among them) for the graph.

``gap`` is an honest bound whatever the tolerance: ``objective - LB`` with the Lagrangian lower
bound ``LB = sum(u) + sum(v) + sum_i min(0, min_j (c_ij - u_i - v_j))`` (square), valid for any
duals; for ``n_rows < n_cols`` the column duals of ``sum_i x_ij <= 1`` count only where negative,
``LB = sum(u) + sum(min(v, 0)) + ...``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..costs import rounded_cost
from ..device import is_cpu, pick_device
from ..gemm import block_shape, budget_bytes, exact_costs, gemm_blocks
from ..jit import njit, prange
from .blocks import check_pair
from .graph import CandidateGraph
from .kernels import mask_edges, push_smallest
from .products import ProductStore
from .screen import Screen, screen_rows

if TYPE_CHECKING:  # torch is imported where CUDA needs it: the CPU paths take 2 s less to start
    import torch

TOL = 2.0 ** -21  # default relative tolerance tau of the certificate
_INF = np.inf


def _merge_smallest(vals: torch.Tensor, idx: torch.Tensor, extra: torch.Tensor,
                    nv: torch.Tensor, ni: torch.Tensor, ne: torch.Tensor, k: int):
    """Keep the k smallest of two [r, *] candidate lists (values, indices, payload)."""
    import torch
    cv = torch.cat([vals, nv], 1)
    kk = min(k, cv.shape[1])
    top, pos = torch.topk(cv, kk, dim=1, largest=False)
    return (top, torch.gather(torch.cat([idx, ni], 1), 1, pos),
            torch.gather(torch.cat([extra, ne], 1), 1, pos))


class _MinMaxPlus:
    """``out[i] = min_j (max(r[i], s[j]) + w[j])`` for fixed r and s and any w: the sort and the
    search are made once, in O((n + m) log m); each w then costs O(n + m) (a certificate round
    asks for eight, with new duals; persist 8192: 0.09 s of 1.0 s in sorts and searches)."""

    def __init__(self, r: np.ndarray, s: np.ndarray):
        self.r = r
        self.order = np.argsort(s, kind="stable")
        self.ss = s[self.order]
        self.p = np.searchsorted(self.ss, r, side="right")

    def __call__(self, w: np.ndarray) -> np.ndarray:
        """+inf for every i when s is empty."""
        ss, p = self.ss, self.p
        if len(ss) == 0:
            return np.full(len(self.r), _INF)
        ws = w[self.order]
        prefix = np.minimum.accumulate(ws)  # min w over s_j <= r_i
        suffix = np.minimum.accumulate((ss + ws)[::-1])[::-1]  # min (s_j + w_j) over s_j > r_i
        t1 = np.where(p > 0, self.r + prefix[np.maximum(p - 1, 0)], _INF)
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
    plans: dict = field(default_factory=dict)  # the graph's bounds as :class:`_MinMaxPlus`

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
    rows_streamed: int  # rows whose every pair was checked (GEMM or product store)
    pairs_streamed: int  # float32 GEMM work of this pass, in (row, column) pairs
    pairs_screened: int  # the screen's GEMM work of this pass (:mod:`.screen`)
    min_reduced_cost: float  # lower bound of the smallest reduced cost of any pair
    new_rows: np.ndarray = field(repr=False, default=None)  # pairs to add (best by reduced cost)
    new_cols: np.ndarray = field(repr=False, default=None)
    new_costs: np.ndarray = field(repr=False, default=None)
    new_violations: int = 0  # how many of those pairs violate


def _bounds(graph: CandidateGraph, u: np.ndarray, v: np.ndarray,
            snaps: _Snapshots | None) -> tuple[np.ndarray, np.ndarray]:
    """Row- and column-wise lower bounds of ``c_ij - u_i - v_j`` over pairs outside the graph
    (``snaps`` keeps the bounds' sorts for the later rounds of a solve: its graph's bounds do
    not change, only its edges)."""
    na, nb = graph.row_sq, graph.col_sq
    plans = snaps.plans if snaps is not None else {}
    if not plans:
        r, s, rp, sq = graph.row_kth, graph.col_kth, graph.row_kth_ip, graph.col_kth_ip
        plans.update(row=_MinMaxPlus(r, s), row_ip=_MinMaxPlus(rp, sq), col=_MinMaxPlus(s, r),
                     col_ip=_MinMaxPlus(sq, rp))
    row = np.maximum(plans["row"](-v) - u, na - u + plans["row_ip"](nb - v))
    if snaps is not None:
        row = np.maximum(row, snaps.row_bound(u, v))
    col = np.maximum(plans["col"](-u) - v, nb - v + plans["col_ip"](na - u))
    return np.maximum(row, float(np.min(col))), col


@njit(parallel=True, cache=True)
def _stream_block(G, grow, pos, c0, na, nb, u, v, sa, sb, e_ptr, e_col, hv, hj, hg, viol):
    """Rows ``pos`` of the streamed set against columns c0.. (their products in rows ``grow`` of
    G, a GEMM block or the product store): per row, the count of shifted reduced costs
    ``c - u - v + sa_i + sb_j`` below 0 and a bounded max-heap of the m smallest (with column
    and inner product), over pairs outside the graph (``e_col`` sorted within each row), ``c``
    by :func:`saematch.costs.rounded_cost`. The keys of a row are computed first, in a
    loop the compiler vectorises; the heap then sees only the few keys below its top."""
    w = G.shape[1]
    nb_, v_, sb_ = nb[c0:c0 + w], v[c0:c0 + w], sb[c0:c0 + w]  # indexed from 0: vectorises
    for tt in prange(pos.shape[0]):
        t = pos[tt]
        gr = G[grow[tt]]
        key = np.empty(w)
        ai, ui, si = na[t], u[t], sa[t]
        for jj in range(w):
            c = rounded_cost(ai, nb_[jj], gr[jj])
            key[jj] = (np.float64(c) - ui - v_[jj]) + si + sb_[jj]
        mask_edges(key, e_ptr, e_col, t, c0)
        viol[t] += push_smallest(hv[t], hj[t], hg[t], key, c0, gr)


class _Streamed(NamedTuple):
    """What streaming rows R found, per row of R: a lower bound of its reduced costs, its m best
    pairs outside the graph by shifted reduced cost ``c - u - v + sa_i + sb_j`` (sorted; +inf
    where the row has fewer), their costs, a lower bound of the shifted reduced cost of every
    pair left out of those (+inf: none left), and its pairs below the tolerance."""

    row_min: np.ndarray
    keys: np.ndarray
    cols: np.ndarray
    costs: np.ndarray
    kth: np.ndarray
    violations: np.ndarray
    gemm_rows: int  # rows that went through the float32 GEMM
    screened_rows: int  # rows that went through the screen


def _stream_rows(A, B, graph: CandidateGraph, R: np.ndarray, u: np.ndarray, v: np.ndarray,
                 sa: np.ndarray, sb: np.ndarray, m: int, block: int, device: str,
                 mem_gib: float | None, deadline: float | None, store: ProductStore | None,
                 screen: Screen | None = None) -> _Streamed | None:
    """Exact reduced costs of rows R x all columns outside the graph, from the product ``store``
    (rows not in it yet are computed into it first), through the screen (:mod:`.screen`)
    or by one float32 GEMM pass over those rows (numba selection on the CPU, ``torch.topk`` on
    CUDA). None if the deadline stopped it."""
    n = B.shape[0]
    mm = min(m, n)
    sub = graph.costs[R]
    sub.sort_indices()
    on_cpu = is_cpu(device)
    if screen is not None and store is None and on_cpu:
        return _screen(screen, A, B, graph, R, sub, u, v, sa, sb, mm, block, device, mem_gib,
                       deadline)
    AR = A if np.array_equal(R, np.arange(A.shape[0])) else np.ascontiguousarray(A[R])
    if not on_cpu:
        return _stream_rows_torch(AR, B, sub, graph.row_sq[R], graph.col_sq, u[R], v, sa[R],
                                  sb, mm, block, device, mem_gib, deadline)
    hv = np.full((len(R), mm), _INF)
    hj = np.zeros((len(R), mm), np.int64)
    hg = np.zeros((len(R), mm), np.float32)
    viol = np.zeros(len(R), np.int64)
    args = (np.ascontiguousarray(graph.row_sq[R]), graph.col_sq, np.ascontiguousarray(u[R]), v,
            np.ascontiguousarray(sa[R]), sb, sub.indptr.astype(np.int64),
            sub.indices.astype(np.int64))
    if store is not None:  # rows not kept yet are computed into the store first
        new = R[~store.kept[R]]
        if len(new):
            for rows, c0, G in gemm_blocks(np.ascontiguousarray(A[new]), B, block=block,
                                           device="cpu", mem_gib=mem_gib):
                if _past(deadline):
                    return None
                store.G[new[rows], c0:c0 + G.shape[1]] = G
            store.kept[new] = True
        _stream_block(store.G, R, np.arange(len(R)), 0, *args, hv, hj, hg, viol)
        gemm_rows = len(new)
    else:
        for rows, c0, G in gemm_blocks(AR, B, block=block, device="cpu", mem_gib=mem_gib):
            if _past(deadline):
                return None
            _stream_block(G, np.arange(G.shape[0]), np.arange(rows.start, rows.stop), c0, *args,
                          hv, hj, hg, viol)
        gemm_rows = len(R)
    order = np.argsort(hv, axis=1, kind="stable")
    take = np.take_along_axis
    hv, hj = take(hv, order, 1), take(hj, order, 1)
    cost = exact_costs(graph.row_sq[R][:, None], graph.col_sq[hj], take(hg, order, 1))
    return _Streamed(row_min=hv[:, 0] - sa[R] - np.max(sb), keys=hv, cols=hj, costs=cost,
                     kth=_kth(hv), violations=viol, gemm_rows=gemm_rows, screened_rows=0)


def _kth(keys: np.ndarray) -> np.ndarray:
    """Per row, the largest of its kept keys, or +inf where it kept fewer than the heap held
    (then no pair of the row is left out)."""
    finite = np.isfinite(keys)
    return np.where(finite.all(1), np.max(np.where(finite, keys, -_INF), axis=1), _INF)


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline


def _screen(screen: Screen, A, B, graph: CandidateGraph, R, sub, u, v, sa, sb, mm: int,
            block: int, device: str, mem_gib: float | None,
            deadline: float | None) -> _Streamed | None:
    """:func:`_stream_rows` through the screen. A row's violations are exact when all its
    open pairs fit its m best; otherwise the proven ones count. A row with more open pairs
    than that and none proven, in a pass that proved none anywhere, is streamed in float32."""
    s = screen_rows(screen, R, sub, graph.row_sq[R], graph.col_sq, u[R], v, sa[R], sb, mm,
                    block, mem_gib, lambda: _past(deadline))
    if s is None:
        return None
    found = (s.keys < 0).sum(1)
    over = s.n_open > np.isfinite(s.lower).sum(1)
    viol = np.where(over, np.maximum(found, s.n_proven), found)
    kth = _kth(s.lower)  # every pair left out of a row's m has a lower end at least this
    # the row's smallest reduced cost, for the lower bound: the m pairs' exact keys and kth,
    # not the smallest lower end (bf16-wide: gap 4e-3 on the workflow test's 128-feature pair)
    row_min = np.minimum(np.min(s.keys, axis=1), kth)
    res = _Streamed(row_min=row_min - sa[R] - np.max(sb), keys=s.keys, cols=s.cols,
                    costs=s.costs, kth=kth, violations=viol, gemm_rows=0,
                    screened_rows=s.computed)
    if viol.sum() or not over.any():
        return res
    redo = np.flatnonzero(over)
    exact = _stream_rows(A, B, graph, R[redo], u, v, sa, sb, mm, block, device, mem_gib,
                         deadline, None)
    if exact is None:
        return None
    for name in ("row_min", "keys", "cols", "costs", "kth", "violations"):
        getattr(res, name)[redo] = getattr(exact, name)
    return res._replace(gemm_rows=exact.gemm_rows)


def _stream_rows_torch(AR, B, sub, na, nb, u, v, sa, sb, mm: int, block: int, device: str,
                       mem_gib: float | None, deadline: float | None):
    """:func:`_stream_rows` with torch on the device (GEMM blocks + ``torch.topk``)."""
    import torch
    dev = pick_device(device)
    n = B.shape[0]
    rows_per_block, tile = block_shape(len(AR), n, block, budget_bytes(device, mem_gib), 24)
    tu, tv, tta, ttb, tna, tnb = (torch.from_numpy(np.ascontiguousarray(x)).to(dev)
                                  for x in (u, v, sa, sb, na, nb))
    f64 = dict(dtype=torch.float64, device=dev)
    best_rc = torch.full((len(AR), mm), _INF, **f64)
    best_j = torch.zeros((len(AR), mm), dtype=torch.int64, device=dev)
    best_c = torch.zeros((len(AR), mm), dtype=torch.float32, device=dev)
    row_min = torch.full((len(AR),), _INF, **f64)
    viol = torch.zeros(len(AR), dtype=torch.int64, device=dev)
    e_row = np.repeat(np.arange(len(AR)), np.diff(sub.indptr))
    e_col = sub.indices.astype(np.int64)
    order = np.argsort(e_col, kind="stable")
    e_row, e_col = e_row[order], e_col[order]
    for c0 in range(0, n, tile):
        c1 = min(c0 + tile, n)
        if _past(deadline):
            return None
        gcols = torch.arange(c0, c1, device=dev)
        lo, hi = np.searchsorted(e_col, [c0, c1])
        er, ec = e_row[lo:hi], e_col[lo:hi] - c0
        for rows, _, G in gemm_blocks(AR, B[c0:c1], block=rows_per_block, device=device,
                                      whole_rows=True):
            # rounded as saematch.gemm.exact_costs rounds it
            c = ((tna[rows][:, None] + tnb[gcols][None, :]) - 2.0 * G.double()).clamp_min_(
                0.0).float()
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
            viol[rows] += (rc < 0).sum(1)
            top, j = torch.topk(rc, min(mm, c1 - c0), dim=1, largest=False)
            best_rc[rows], best_j[rows], best_c[rows] = _merge_smallest(
                best_rc[rows], best_j[rows], best_c[rows], top, gcols[j], torch.gather(c, 1, j),
                mm)
            del rc, c
    keys = best_rc.cpu().numpy()
    return _Streamed(row_min=row_min.cpu().numpy(), keys=keys, cols=best_j.cpu().numpy(),
                     costs=best_c.cpu().numpy(), kth=_kth(keys), violations=viol.cpu().numpy(),
                     gemm_rows=len(AR), screened_rows=0)


def _check(A, B, graph: CandidateGraph, u: np.ndarray, v: np.ndarray, tau: float, *,
           snaps: _Snapshots | None, m: int, block: int, device: str, mem_gib: float | None,
           deadline: float | None, rows_only: np.ndarray | None = None,
           max_rows: int | None = None, store: ProductStore | None = None,
           screen: Screen | None = None) -> DualCheck:
    """One certificate pass. A pair passes if ``c_ij - u_i - v_j >= -tau (|a_i|^2 + |b_j|^2) - eps``
    (eps: a float64 floor, 2**-40 of the largest dual or squared norm), i.e. if
    ``c_ij - ut_i - vt_j >= 0`` for the shifted duals ``ut = u - tau |a|^2 - eps/2``,
    ``vt = v - tau |b|^2 - eps/2``: decisions use (ut, vt), the lower bound uses (u, v).
    Rows the O(n) bounds do not settle are streamed whole (at most ``max_rows`` that need the
    GEMM, worst first; rows kept in ``store`` or by the screen are re-read and do not count).
    ``rows_only``: stream exactly these rows (to grow stuck rows). ``screen``: rows not kept
    in ``store`` go through this screen (:mod:`.screen`) instead of the float32 GEMM."""
    n_rows, n = graph.shape
    g = graph.costs
    na, nb = graph.row_sq, graph.col_sq
    # per-pair tolerance tau (|a_i|^2 + |b_j|^2) plus a float64 floor (zero vectors, dual drift)
    eps = 2.0 ** -40 * (np.max(np.abs(u)) + np.max(np.abs(v)) + np.max(na) + np.max(nb))
    sa, sb = tau * na + eps / 2, tau * nb + eps / 2
    ut, vt = u - sa, v - sb
    e_row = np.repeat(np.arange(n_rows), np.diff(g.indptr))
    rc_e = g.data.astype(np.float64) - u[e_row] - v[g.indices]
    graph_viol = int((rc_e + sa[e_row] + sb[g.indices] < 0).sum())
    nonempty = np.diff(g.indptr) > 0
    cand_min = np.full(n_rows, _INF)
    if len(rc_e):
        cand_min[nonempty] = np.minimum.reduceat(rc_e, g.indptr[:-1][nonempty].astype(np.int64))
    test_row, test_col = _bounds(graph, ut, vt, snaps)
    noncand = _bounds(graph, u, v, snaps)[0]  # unshifted, for the lower bound
    truncated = False
    if rows_only is not None:
        R = np.asarray(rows_only, dtype=np.int64)
    else:
        R = np.flatnonzero(test_row < 0) if np.any(test_col < 0) else np.zeros(0, np.int64)
        R = R[np.argsort(test_row[R], kind="stable")]  # worst first
        if max_rows is not None:  # rows that need the GEMM: the rest waits for the next round
            kept = (store.kept if store is not None else
                    screen.kept if screen is not None else np.zeros(n_rows, bool))
            gemm = np.flatnonzero(~kept[R])
            if len(gemm) > max_rows:
                R, truncated = np.delete(R, gemm[max_rows:]), True
    new_r = new_c = np.zeros(0, np.int64)
    new_v = np.zeros(0, np.float32)
    nviol = new_viol = gemm_rows = screened_rows = 0
    s = _stream_rows(A, B, graph, R, u, v, sa, sb, m, block, device, mem_gib, deadline, store,
                     screen) if len(R) else None
    complete = not len(R) or s is not None
    if s is not None:
        noncand[R] = s.row_min
        finite = np.isfinite(s.keys)
        new_r, new_c = np.repeat(R, s.keys.shape[1])[finite.ravel()], s.cols[finite]
        new_v = s.costs[finite]
        new_viol = int((s.keys[finite] < 0).sum())
        nviol, gemm_rows, screened_rows = int(s.violations.sum()), s.gemm_rows, s.screened_rows
        if snaps is not None:  # every pair still outside has shifted rc >= kth
            snaps.record(R, s.kth, ut, vt)
    row_lb = np.minimum(cand_min, noncand)
    v_lb = v if n_rows == n else np.minimum(v, 0.0)  # duals of sum_i x_ij <= 1 are <= 0
    lower = float(np.sum(u) + np.sum(v_lb) + np.sum(np.minimum(0.0, row_lb)))
    ok = complete and not truncated and nviol == 0 and graph_viol == 0 and rows_only is None
    streamed = len(R) if complete else 0
    return DualCheck(ok=ok, complete=complete, violations=nviol, graph_violations=graph_viol,
                     lower_bound=lower, rows_streamed=streamed, pairs_streamed=gemm_rows * n,
                     pairs_screened=screened_rows * n,
                     min_reduced_cost=float(np.min(row_lb)), new_rows=new_r, new_cols=new_c,
                     new_costs=new_v, new_violations=new_viol)


def check_duals(A: np.ndarray, B: np.ndarray, graph: CandidateGraph, u: np.ndarray,
                v: np.ndarray, *, tol: float = TOL, block: int = 4096, device: str = "auto",
                mem_gib: float | None = None) -> DualCheck:
    """The optimality certificate on its own: is ``c_ij - u_i - v_j >= -tol (|a_i|^2 + |b_j|^2)``
    for *every* pair, in the graph or not? Streams only the rows and columns the bounds leave open.
    """
    A, B = check_pair(A, B)
    return _check(A, B, graph, np.asarray(u, np.float64), np.asarray(v, np.float64), float(tol),
                  snaps=None, m=1, block=block, device=device, mem_gib=mem_gib, deadline=None)


