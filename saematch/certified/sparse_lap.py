"""Exact linear assignment on a sparse graph, with dual potentials (numba).

Rows are the features of layer A, columns those of layer B (``n_rows <= n_cols``; a row must be
matched, a column may stay free when ``n_rows < n_cols``). The solver keeps dual potentials
``u`` (rows) and ``v`` (columns) with reduced costs ``c_ij - u_i - v_j >= 0`` on every edge of
the graph and ``= 0`` on the matching, which is what the certificate extends to all pairs.
For a rectangular problem it also keeps ``v_j = 0`` on every free column and ``v <= 0``
(the duals of the inequality ``sum_i x_ij <= 1``).

Jonker and Volgenant's (1987) phases, on CSR rows:

1. cold start, square only: *column reduction* (``v_j = min_i c_ij``, each column to its argmin
   row if that row is free) and *reduction transfer*; a rectangular problem starts from v = 0;
2. *augmenting row reduction*: a free row takes its best column and lowers that column's
   potential to its second best, evicting the previous owner (two passes); most rows of a
   graph whose features have clear partners are matched here, at a few edge scans each;
3. *shortest augmenting paths* (Dijkstra on reduced costs with a binary heap) from each row
   still free, with the dual update of scipy's ``linear_sum_assignment`` (Crouse 2016).

A warm start (edges were added) keeps ``v`` and the matches that are still tight.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..jit import njit

_INF = np.inf
_REDUCE_PASSES = 4096  # augmenting row reduction on stale warm restarts, see solve()
_REDUCE_PATIENCE = 256


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
def _row_minima(indptr, indices, cost, v, u, best_col):
    """``u_i = min_j (c_ij - v_j)`` over row i's edges (0 for an empty row), and its argmin."""
    for i in range(u.shape[0]):
        best = _INF
        bj = -1
        for e in range(indptr[i], indptr[i + 1]):
            r = cost[e] - v[indices[e]]
            if r < best:
                best = r
                bj = indices[e]
        u[i] = best if bj >= 0 else 0.0
        best_col[i] = bj


@njit(cache=True)
def _column_reduction(indptr, indices, cost, v, col4row, row4col):
    """Cold square start: ``v_j = min_i c_ij`` and each column to its argmin row if free; then
    reduction transfer (an assigned row's column potential drops by the row's second best
    reduced cost, so that row is indifferent and later rows see the column's true price)."""
    n = col4row.shape[0]
    m = v.shape[0]
    best_row = np.full(m, -1, np.int64)
    for j in range(m):
        v[j] = _INF
    for i in range(n):
        for e in range(indptr[i], indptr[i + 1]):
            j = indices[e]
            if cost[e] < v[j]:
                v[j] = cost[e]
                best_row[j] = i
    for j in range(m - 1, -1, -1):
        if best_row[j] == -1:
            v[j] = 0.0
            continue
        i = best_row[j]
        if col4row[i] == -1:
            col4row[i] = j
            row4col[j] = i
    for i in range(n):
        j1 = col4row[i]
        if j1 == -1:
            continue
        second = _INF
        for e in range(indptr[i], indptr[i + 1]):
            j = indices[e]
            if j != j1:
                r = cost[e] - v[j]
                if r < second:
                    second = r
        if second < _INF:
            v[j1] -= second  # rc(i, j1) was 0; now equals the row's second best


@njit(cache=True)
def _warm_start(indptr, indices, cost, u, v, col4row, row4col, rectangular):
    """Keep v and the matches that are still argmins of ``c_ij - v_j``; a rectangular problem
    also needs ``v = 0`` on free columns, so freeing a column resets it and the check repeats."""
    n = u.shape[0]
    m = v.shape[0]
    best_col = np.empty(n, np.int64)
    while True:
        if rectangular:
            for j in range(m):
                if row4col[j] == -1:
                    v[j] = 0.0
        _row_minima(indptr, indices, cost, v, u, best_col)
        changed = False
        for i in range(n):
            j0 = col4row[i]
            if j0 == -1:
                continue
            mine = _INF
            for e in range(indptr[i], indptr[i + 1]):
                if indices[e] == j0:
                    mine = cost[e] - v[j0]
                    break
            if not (mine <= u[i]):
                col4row[i] = -1
                row4col[j0] = -1
                changed = True
        if not (changed and rectangular):
            break


@njit(cache=True)
def _augmenting_row_reduction(indptr, indices, cost, v, col4row, row4col, passes, patience):
    """JV's augmenting row reduction over the free rows, at most ``passes`` times, stopping once
    ``patience`` passes in a row have left no fewer rows free than the best pass. Keeps every
    matched row at an argmin of ``c_ij - v_j`` and only lowers the potentials of matched
    columns. Each pass takes its free rows in index order: in the order they were evicted the
    same rows can evict each other pass after pass (gemma 65536, a warm restart: 400 rows free
    from pass 16 to pass 4096; in index order 41)."""
    n = col4row.shape[0]
    free = np.empty(n, np.int64)
    nfree = 0
    for i in range(n):
        if col4row[i] == -1 and indptr[i + 1] > indptr[i]:
            free[nfree] = i
            nfree += 1
    best = nfree
    idle = 0
    for _ in range(passes):
        free[:nfree].sort()
        current = 0
        new_free = 0
        count = 0
        limit = nfree * 8 + 16
        while current < nfree:
            count += 1
            i = free[current]
            current += 1
            umin = _INF
            usub = _INF
            j1 = -1
            j2 = -1
            for e in range(indptr[i], indptr[i + 1]):
                j = indices[e]
                h = cost[e] - v[j]
                if h < usub:
                    if h >= umin:
                        usub = h
                        j2 = j
                    else:
                        usub = umin
                        j2 = j1
                        umin = h
                        j1 = j
            i0 = row4col[j1]
            lowers = usub < _INF and umin < usub
            if count < limit:
                if lowers:
                    v[j1] -= usub - umin
                elif i0 >= 0 and j2 >= 0:
                    j1 = j2
                    i0 = row4col[j2]
                if i0 >= 0:
                    if lowers:
                        current -= 1
                        free[current] = i0
                    else:
                        free[new_free] = i0
                        new_free += 1
            elif i0 >= 0:
                free[new_free] = i0
                new_free += 1
            col4row[i] = j1
            row4col[j1] = i
            if i0 >= 0:
                col4row[i0] = -1
        nfree = new_free
        if nfree == 0:
            break
        idle = 0 if nfree < best else idle + 1
        best = min(best, nfree)
        if idle >= patience:
            break


@njit(cache=True)
def _augment(indptr, indices, cost, u, v, col4row, row4col, stuck):
    """Shortest augmenting path (Dijkstra on reduced costs, binary heap) from every free row.

    A search that runs out of columns flags its root in ``stuck`` (the graph has no matching
    that covers every row) and marks the columns it reached as dead: no free column is reachable
    from them while the matching stays as it is, so later searches skip them. Edges into dead
    columns may then lose dual feasibility, which is why the caller must add edges and warm
    start again whenever a search failed. Returns (failed searches, Dijkstra steps).

    An edge scan reads one 16-byte pair per column, ``[v_j, d_j]`` (``d_j``: the search's
    tentative distance, -inf once the column is scanned or dead, so one comparison skips those
    too), and pushes nothing at or beyond the nearest free column found so far (it cannot be
    scanned before that column ends the search). Gemma 65536's six solves, replayed: 35.7-37.8 s
    -> 27.4-29.3 s, the same duals and matchings.
    """
    n = u.shape[0]
    m = v.shape[0]
    vd = np.empty((m, 2))
    for j in range(m):
        vd[j, 0] = v[j]
        vd[j, 1] = _INF
    pred = np.empty(m, np.int64)
    touched = np.empty(m, np.int64)
    sr = np.empty(n, np.int64)  # the search tree's rows, and the distance each was reached at
    srd = np.empty(n)
    sc = np.empty(m, np.int64)  # its scanned columns, and their distances
    scd = np.empty(m)
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
        best_free = _INF
        i = cur
        sink = -1
        while True:
            sr[nsr] = i
            nsr += 1
            ui = u[i]
            for e in range(indptr[i], indptr[i + 1]):
                j = indices[e]
                r = min_val + cost[e] - ui - vd[j, 0]
                if r < vd[j, 1] and r <= best_free:
                    if vd[j, 1] == _INF:
                        touched[nt] = j
                        nt += 1
                    vd[j, 1] = r
                    pred[j] = i
                    if row4col[j] == -1:
                        best_free = r
                    hs = _heap_push(hk, hc, hs, r, j)
            j = -1
            while hs > 0:
                key, jj, hs = _heap_pop(hk, hc, hs)
                if key > vd[jj, 1]:  # stale, scanned or dead
                    continue
                j = jj
                break
            if j == -1:
                break
            steps += 1
            min_val = vd[j, 1]
            vd[j, 1] = -_INF
            sc[nsc] = j
            scd[nsc] = min_val
            nsc += 1
            if row4col[j] == -1:
                sink = j
                break
            i = row4col[j]
            srd[nsr] = min_val
        if sink == -1:
            nfail += 1
            stuck[cur] = True
            for t in range(nt):  # scanned columns stay at -inf: dead
                j = touched[t]
                if vd[j, 1] != -_INF:
                    vd[j, 1] = _INF
            continue
        u[cur] += min_val
        for t in range(1, nsr):
            u[sr[t]] += min_val - srd[t]
        for t in range(nsc):
            j = sc[t]
            v[j] -= min_val - scd[t]
            vd[j, 0] = v[j]
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
            vd[touched[t], 1] = _INF
    return nfail, steps


@dataclass
class LapState:
    """Duals and matching of a sparse solve, kept between warm starts."""

    u: np.ndarray  # [n_rows] float64
    v: np.ndarray  # [n_cols] float64
    col4row: np.ndarray  # [n_rows] int64, -1 = free
    row4col: np.ndarray  # [n_cols] int64, -1 = free
    cold: bool = True

    @classmethod
    def empty(cls, n_rows: int, n_cols: int) -> LapState:
        return cls(u=np.zeros(n_rows), v=np.zeros(n_cols), col4row=np.full(n_rows, -1, np.int64),
                   row4col=np.full(n_cols, -1, np.int64))


def solve(costs: sp.csr_matrix, st: LapState,
          reduce: bool = False) -> tuple[int, np.ndarray, int]:
    """Solve (or warm-restart) the assignment on the graph ``costs`` [n_rows, n_cols] in place.

    ``reduce``: on a warm restart of a square problem, also run augmenting row reduction (the
    driver asks for it when most of the matching is stale, see :func:`certified_assign`).
    Returns (number of rows no augmenting path reached, their mask, Dijkstra steps). With no
    failures, ``st`` holds an optimal matching on the graph and duals that prove it.
    """
    indptr = costs.indptr.astype(np.int64)
    data = costs.data.astype(np.float64)
    n_rows, n_cols = costs.shape
    rectangular = n_rows < n_cols
    if st.cold and not rectangular:
        _column_reduction(indptr, costs.indices, data, st.v, st.col4row, st.row4col)
        # JV's two passes (a patience of 2 lets both run)
        _augmenting_row_reduction(indptr, costs.indices, data, st.v, st.col4row, st.row4col, 2,
                                  2)
    else:
        _warm_start(indptr, costs.indices, data, st.u, st.v, st.col4row, st.row4col,
                    rectangular)
        # on a warm restart ARR lowers the potentials of matched columns that the previous
        # certificate's row margins were built on, and the next certificate then finds more
        # violations (gemma 8192, every round: 87 rounds and 10.2 GEMM passes with it, 10 rounds
        # and 2.2 passes without); after a round that broke most of the matching it pays, and
        # more passes pay more (gemma 16384, products kept: Dijkstra steps 1.75M with 4 passes,
        # 1.11M with 64, 0.86M with 256; solve 3.8, 2.4, 2.3 s); up to 4096 passes until 256
        # bring no progress, gemma 65536: 64 passes -> this, solves 28.2 -> 12.9 s, Dijkstra
        # steps 18.4M -> 5.9M, the same permutation
        if reduce and not rectangular:
            _augmenting_row_reduction(indptr, costs.indices, data, st.v, st.col4row, st.row4col,
                                      _REDUCE_PASSES, _REDUCE_PATIENCE)
    st.cold = False
    _row_minima(indptr, costs.indices, data, st.v, st.u, np.empty(n_rows, np.int64))
    stuck = np.zeros(n_rows, dtype=np.bool_)
    nfail, steps = _augment(indptr, costs.indices, data, st.u, st.v, st.col4row, st.row4col,
                            stuck)
    return int(nfail), stuck, int(steps)
