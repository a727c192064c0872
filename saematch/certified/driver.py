"""``certified_assign``: candidates, sparse solves and certificate rounds until proved optimal."""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from ..assign import Assignment, one_to_one
from ..device import is_cpu
from ..errors import SAEMatchError
from ..jit import gc_paused
from .blocks import check_pair
from .certificate import TOL, _check, _Snapshots
from .graph import CandidateGraph, add_edges, candidate_graph
from .products import ProductStore, products_bytes
from .screen import Screen, screen_precision
from .sparse_lap import LapState, solve

_INF = np.inf
# candidates per list (k) by default: where rows are kept, a round re-reads them for free and
# deeper lists only cost (EPYC, bf16, again: gemma 16384 6.8 -> 7.9 s, persist 8192 0.8 ->
# 1.0 s with 32); where rows stream, deeper lists give first duals that need fewer rounds of
# streaming (gemma 65536 in int8 with AVX2 only: 3.65 -> 3.08 passes, 371.2 -> 316.0 s)
K_KEPT, K_STREAMED = 16, 32


def _keeps(n_rows: int, n_cols: int, on_cpu: bool, screened: bool,
           products_gib: float | None) -> bool:
    """Whether the products are kept (:mod:`.products`; the screen's take 2 bytes a pair)."""
    return on_cpu and bool(products_bytes(n_rows, n_cols, products_gib, 2 if screened else 4))


def default_k(n_rows: int, n_cols: int, device: str = "auto", screen: str = "auto",
              products_gib: float | None = None) -> int:
    """:func:`certified_assign`'s ``k`` when none is given: :data:`K_STREAMED` where
    certificate rounds stream rows through the CPU's GEMM, :data:`K_KEPT` where the products
    are kept and on CUDA (where passes are cheap and the solve costs most; 32 is unmeasured
    there)."""
    on_cpu = is_cpu(device)
    screened = screen_precision(screen, on_cpu) is not None
    return _k_for(on_cpu, _keeps(n_rows, n_cols, on_cpu, screened, products_gib))


def _k_for(on_cpu: bool, keep: bool) -> int:
    return K_STREAMED if on_cpu and not keep else K_KEPT


@gc_paused()
def certified_assign(A: np.ndarray, B: np.ndarray, *, k: int | None = None,
                     random_k: int | None = None, block: int = 4096,
                     device: str = "auto", time_limit: float | None = None,
                     tol: float | None = None, graph: CandidateGraph | None = None,
                     add_per_row: int | None = None, rows_per_round: int | None = None,
                     mem_gib: float | None = None, products_gib: float | None = None,
                     screen: str = "auto", return_duals: bool = False,
                     progress: bool = False) -> Assignment:
    """Exact assignment of A's rows to distinct rows of B minimising ``sum ||a_i - b_P(i)||^2``,
    with proof. ``n_A <= n_B``: a permutation when equal, else an injective map.

    ``graph``: a precomputed :func:`candidate_graph` (e.g. from :func:`read_candidates`), built
    here with ``k`` (default :func:`default_k`) and ``random_k`` otherwise. ``tol``: relative
    tolerance tau (default :data:`TOL` = 2**-21); a pair passes the certificate if
    ``c_ij - u_i - v_j >= -tau (|a_i|^2 + |b_j|^2)``.
    ``time_limit`` (seconds) is checked between GEMM tiles of the certificate and between rounds;
    the candidate pass and the solves that make the matching complete always finish.
    Status ``optimal``: certified. ``time_limit``: stopped early. Either way ``gap`` is
    ``objective - LB`` for the best Lagrangian lower bound seen (``info['lower_bound']``).
    Each certificate round streams at most ``rows_per_round`` rows through the GEMM (default
    ``max(256, n/2)``), those with the most negative bounds first, and adds each streamed row's
    ``add_per_row`` (default ``max(2k, 64)``; k when the products are kept) best pairs by reduced
    cost: duals improve between rounds, so rows streamed later are streamed fewer times.
    ``mem_gib`` bounds one GEMM block's temporaries. On the CPU the candidate pass and the
    streamed rows may go through a bf16 or int8 GEMM first (``screen``: "auto", "bf16", "int8"
    or "off"; :func:`.screen.screen_precision`; ``info["screen"]`` says which ran). When all
    of ``A @ B.T`` fits in ``products_gib`` (default :data:`PRODUCTS_GIB`; 0 turns it off), in
    float32 (:mod:`.products`) or as the screen's products (bf16, 2 bytes a pair), it is kept
    in memory: every row goes through the GEMM once, in
    the candidate pass when the graph is built here.
    ``return_duals=True`` returns ``(assignment, u, v)``. ``match_cost`` holds the graph's float32
    costs, which can differ from :func:`saematch.costs.cost_matrix` in the last ulp.
    """
    t_start = time.monotonic()
    deadline = None if time_limit is None else t_start + float(time_limit)
    A, B = check_pair(A, B)
    n, n_cols = A.shape[0], B.shape[0]
    on_cpu = is_cpu(device)
    precision = screen_precision(screen, on_cpu)  # rejects a bad value before any work
    screened = precision is not None
    if n == 0:
        res = one_to_one(Assignment(perm=np.zeros(0, np.int64), match_cost=np.zeros(0),
                                    solver="certified"), n_cols)
        return (res, np.zeros(0), np.zeros(n_cols)) if return_duals else res
    keep = _keeps(n, n_cols, on_cpu, screened, products_gib)
    store = ProductStore.allocate(n, n_cols) if keep and not screened else None
    # one screen for the candidate pass and the rounds
    scr = Screen(A, B, keep, precision) if screened else None
    built = graph is None
    if built:
        graph = candidate_graph(A, B, _k_for(on_cpu, keep) if k is None else k,
                                random_k=random_k, block=block, device=device,
                                mem_gib=mem_gib, store=store, screen=scr or "off",
                                progress=progress)
    elif graph.shape != (n, n_cols):
        raise SAEMatchError(f"candidate graph is {graph.shape[0]} x {graph.shape[1]}, but A and "
                            f"B are {n} x {n_cols}")
    t_cand = time.monotonic() - t_start
    tau = TOL if tol is None else float(tol)
    if not tau >= 0:
        raise SAEMatchError(f"tol must be >= 0, got {tol}")
    # kept products make a row cheap to re-read, so rounds add fewer pairs each and more rounds
    # run (gemma 16384: 2.17M -> 1.75M Dijkstra steps with k instead of 4k per row); streamed,
    # 64 at k = 16 and 32 (gemma 65536 in int8, k = 32: 134.1 s with 64, 139.4 s with 128)
    m = add_per_row or (graph.k if keep else max(2 * graph.k, 64))
    m = min(int(m), n_cols)
    st = LapState.empty(n, n_cols)
    snaps = _Snapshots.empty(n)
    costs = graph.costs
    stats = dict(rounds=0, grow_rounds=0, stuck_rows=0, rows_streamed=0, pairs_streamed=0,
                 pairs_screened=0,
                 edges_added=0, violations_added=0, violations_found=0, dijkstra_steps=0)
    t_solve = t_cert = 0.0
    best_lb = -_INF
    status = "optimal"
    kw = dict(m=m, block=block, device=device, mem_gib=mem_gib, store=store,
              screen=scr)
    # half the rows a round: fewer rounds and warm restarts for the same streaming where rows
    # are not kept (gemma 65536 screened in bf16, EPYC: 39.7M -> 18.4M Dijkstra steps, solves
    # 62-86 -> 37.6 s, 2.90 -> 2.95 bf16 passes; gemma 16384 in float32: level, 30.6 / 30.4 s)
    max_rows = int(rows_per_round) if rows_per_round else max(256, -(-n // 2))
    # after a certificate that found more violations than rows most of the matching is stale:
    # the warm restart then also runs augmenting row reduction, if streaming rows again is cheap
    # (it spoils the margins that spare later rounds a GEMM: gemma 8192 in float32 without the
    # store, 0.99 -> 1.46 GEMM passes; with the store, gemma 16384: 3.01M -> 2.17M Dijkstra
    # steps with 4 passes, 1.11M with 64 and k pairs per row; screened in bf16, gemma 16384:
    # 4.39M -> 2.78M steps for 1.10 -> 1.30 bf16 passes; same permutations)
    cheap_rows = store is not None or screened
    stale = False
    while True:
        t0 = time.monotonic()
        nfail, stuck, steps = solve(costs, st, reduce=stale)
        t_solve += time.monotonic() - t0
        stats["rounds"] += 1
        stats["dijkstra_steps"] += steps
        t0 = time.monotonic()
        g = dataclasses.replace(graph, costs=costs)
        if nfail:  # no complete matching on the graph: the failed roots get more candidates
            rows = np.flatnonzero(stuck)
            chk = _check(A, B, g, st.u, st.v, tau, snaps=snaps, deadline=None, rows_only=rows,
                         **kw)
            stats["grow_rounds"] += 1
            stats["stuck_rows"] += len(rows)
            if len(chk.new_rows) == 0:  # cannot happen: a row with all pairs is never stuck
                raise SAEMatchError("certified_assign: stuck rows gained no new pairs")
        else:
            chk = _check(A, B, g, st.u, st.v, tau, snaps=snaps, deadline=deadline,
                         max_rows=max_rows, **kw)
            stats["violations_found"] += chk.violations
            stale = chk.violations > n and cheap_rows
            best_lb = max(best_lb, chk.lower_bound)
            if not chk.ok and (not chk.complete
                               or (deadline is not None and time.monotonic() > deadline)):
                status = "time_limit"
            stats["violations_added"] += chk.new_violations
        stats["rows_streamed"] += chk.rows_streamed
        stats["pairs_streamed"] += chk.pairs_streamed
        stats["pairs_screened"] += chk.pairs_screened
        t_cert += time.monotonic() - t0
        if not nfail and (chk.ok or status == "time_limit"):
            break
        if len(chk.new_rows):
            costs = add_edges(costs, chk.new_rows, chk.new_cols, chk.new_costs)
            stats["edges_added"] += len(chk.new_rows)
    perm = st.col4row.copy()
    match = np.empty(n)
    for i0 in range(0, n, 1 << 16):  # cost of each matched pair, as stored in the graph
        rows = np.arange(i0, min(n, i0 + (1 << 16)))
        match[rows] = np.asarray(costs[rows, perm[rows]]).ravel()
    objective = float(match.sum())
    info = dict(k=graph.k, add_per_row=m, edges=int(costs.nnz), edges_candidates=graph.nnz,
                tol=tau, lower_bound=best_lb, screen=precision or "off", t_candidates=t_cand,
                t_solve=t_solve, t_certify=t_cert, t_total=time.monotonic() - t_start,
                graph_built=built,
                passes=float(built and not screened) + stats["pairs_streamed"] / (n * n_cols),
                screen_passes=float(built and screened) + stats["pairs_screened"] / (n * n_cols),
                **stats)
    res = one_to_one(Assignment(perm=perm, match_cost=match, solver="certified", status=status,
                                gap=max(0.0, objective - best_lb), info=info), n_cols)
    return (res, st.u.copy(), st.v.copy()) if return_duals else res
