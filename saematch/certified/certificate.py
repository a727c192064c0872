"""The optimality certificate: every one of the n_rows x n_cols pairs, in the graph or not, must
have ``c_ij - u_i - v_j >= -tau (|a_i|^2 + |b_j|^2)``.

Row- and column-level bounds (the candidate pass's k-th values, and for rows streamed in an
earlier round the margin then observed, corrected for how far the duals moved) settle most rows
for free; for the rest, pair-level bounds pick the columns that still need checking, and only
those row x column blocks go through the GEMM. Each streamed row hands back its best pairs by
reduced cost (all violations among them) for the graph.

``gap`` is an honest bound whatever the tolerance: ``objective - LB`` with the Lagrangian lower
bound ``LB = sum(u) + sum(v) + sum_i min(0, min_j (c_ij - u_i - v_j))`` (square), valid for any
duals; for ``n_rows < n_cols`` the column duals of ``sum_i x_ij <= 1`` count only where negative,
``LB = sum(u) + sum(min(v, 0)) + ...``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..costs import cost_blocks
from ..device import pick_device
from .blocks import block_shape, budget_bytes, check_pair
from .graph import CandidateGraph

TOL = 2.0 ** -21  # default relative tolerance tau of the certificate
_INF = np.inf


def _col_tiles(n_cols: int, tile: int):
    for c0 in range(0, n_cols, tile):
        yield c0, min(c0 + tile, n_cols)


def _merge_smallest(vals: torch.Tensor, idx: torch.Tensor, extra: torch.Tensor,
                    nv: torch.Tensor, ni: torch.Tensor, ne: torch.Tensor, k: int):
    """Keep the k smallest of two [r, *] candidate lists (values, indices, payload)."""
    cv = torch.cat([vals, nv], 1)
    kk = min(k, cv.shape[1])
    top, pos = torch.topk(cv, kk, dim=1, largest=False)
    return (top, torch.gather(torch.cat([idx, ni], 1), 1, pos),
            torch.gather(torch.cat([extra, ne], 1), 1, pos))


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
    n = graph.shape[1]
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
    n_rows, n = A.shape[0], B.shape[0]
    dev = pick_device(device)
    ncols = n if cols is None else len(cols)
    # cost_blocks holds about 24 bytes per element of a block (float64 temporaries)
    rows_per_block, tile = block_shape(len(R), ncols, block, budget_bytes(dev, mem_gib), 24)
    AR = A if np.array_equal(R, np.arange(n_rows)) else np.ascontiguousarray(A[R])
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
    v_lb = v if n_rows == n else np.minimum(v, 0.0)  # duals of sum_i x_ij <= 1 are <= 0
    lower = float(np.sum(u) + np.sum(v_lb) + np.sum(np.minimum(0.0, row_lb)))
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
    A, B = check_pair(A, B)
    return _check(A, B, graph, np.asarray(u, np.float64), np.asarray(v, np.float64), float(tol),
                  snaps=None, m=1, block=block, device=device, mem_gib=mem_gib, deadline=None)


