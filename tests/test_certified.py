"""Certified sparse assignment (saematch.certified) against dense scipy on small problems."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from saematch.assign import assign_dense
from saematch.certified import (
    K_STREAMED,
    TOL,
    candidate_graph,
    certified_assign,
    check_duals,
    default_k,
    read_candidates,
    write_candidates,
)
from saematch.certified import screen as screen_mod
from saematch.certified.certificate import _check
from saematch.certified.graph import add_edges, build_csr
from saematch.certified.products import ProductStore
from saematch.certified.rounding import Int8, bits, dim_groups, to_bf16
from saematch.certified.screen import Screen, screen_precision, upper_products
from saematch.certified.sparse_lap import LapState, solve
from saematch.costs import cost_matrix
from saematch.errors import SAEMatchError
from saematch.gemm import sqnorms


def _pair(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random vectors with lognormal norms, so the raw-cost ranking has hubs."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d)) * rng.lognormal(0, 0.5, (n, 1))
    B = rng.standard_normal((n, d)) * rng.lognormal(0, 0.5, (n, 1))
    return A.astype(np.float32), B.astype(np.float32)


def _ulps(A: np.ndarray, B: np.ndarray) -> float:
    """How far two sums of the same pairs' float32 costs may lie apart when the costs come from
    GEMMs of other shapes, which a BLAS may sum in another order (OpenBLAS on an AMD EPYC,
    Zen 5: 1.5e-9 relative at n = 60): ``|dg| <= D 2**-23 |a||b|`` per pair, summed over all
    rows as a bound on any matching's."""
    return A.shape[1] * 2.0 ** -22 * float(sqnorms(A).sum() + sqnorms(B).sum())


def _gadgets(g: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``g`` copies of a 2 x 2 problem whose optimum uses a pair that is nobody's top-1.

    Unit vectors (so the cost and inner-product rankings agree): b0 = a1 = z,
    a0 and b1 at 30 degrees from z and 70 degrees apart around it. Costs: c(a1, b0) = 0,
    c(a0, b0) = c(a1, b1) = 0.268, c(a0, b1) = 0.329. With k = 1 the candidate graph is
    {(a0, b0), (a1, b0), (a1, b1)}: its only perfect matching costs 0.536, the optimum
    {(a0, b1), (a1, b0)} costs 0.329. Gadgets live in orthogonal 3-D subspaces (cross costs 2),
    then everything is rotated and shuffled.
    """
    t, phi = np.deg2rad(30), np.deg2rad(70)
    a0 = [np.sin(t), 0, np.cos(t)]
    a1 = [0, 0, 1.0]
    b1 = [np.sin(t) * np.cos(phi), np.sin(t) * np.sin(phi), np.cos(t)]
    D = 3 * g
    A, B = np.zeros((2 * g, D)), np.zeros((2 * g, D))
    for i in range(g):
        A[2 * i, 3 * i:3 * i + 3], A[2 * i + 1, 3 * i:3 * i + 3] = a0, a1
        B[2 * i, 3 * i:3 * i + 3], B[2 * i + 1, 3 * i:3 * i + 3] = a1, b1
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    A, B = A @ Q, B @ Q
    A, B = A[rng.permutation(2 * g)], B[rng.permutation(2 * g)]
    return A.astype(np.float32), B.astype(np.float32)


def _dense(A, B):
    return assign_dense(cost_matrix(A, B))


def _sparse_only_objective(graph) -> float:
    """Optimum restricted to the candidate graph (scipy; +1 keeps zero costs as edges)."""
    g = graph.costs.copy().astype(np.float64)
    g.data += 1.0
    rows, cols = min_weight_full_bipartite_matching(g)
    return float(np.asarray(graph.costs[rows, cols]).sum())


# kept: A @ B.T in memory (these sizes always fit), in float32 or as bf16/int8 screen products;
# streamed: every round's rows through the float32 GEMM again, as at widths whose products do
# not fit; bf16, int8: those passes screened in bf16 or int8
MODES = {"kept": dict(products_gib=None, screen="off"),
         "bf16-kept": dict(products_gib=None, screen="bf16"),
         "int8-kept": dict(products_gib=None, screen="int8"),
         "streamed": dict(products_gib=0, screen="off"),
         "bf16": dict(products_gib=0, screen="bf16"),
         "int8": dict(products_gib=0, screen="int8")}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("n,d,k,seed", [(60, 8, 4, 0), (250, 16, 8, 1), (400, 32, 16, 2)])
def test_matches_dense_scipy(n, d, k, seed, mode):
    A, B = _pair(n, d, seed)
    res = certified_assign(A, B, k=k, block=128, **MODES[mode])
    ref = _dense(A, B)
    # the graph's costs come from float64 dots (bf16) or GEMMs of other shapes than the dense
    # matrix's: they may differ in the last ulp
    assert res.solver == "certified" and res.status == "optimal"
    assert res.objective == pytest.approx(ref.objective, abs=_ulps(A, B))
    np.testing.assert_array_equal(res.perm, ref.perm)  # continuous data: unique optimum
    assert 0.0 <= res.gap <= 1e-7 * ref.objective
    assert set(res.info) >= {"rounds", "k", "edges", "violations_added", "t_total"}
    assert all(np.isscalar(v) for v in res.info.values())


def test_default_k_is_deeper_where_rows_stream():
    """16 candidates per list where the products are kept, 32 where rounds stream rows on the
    CPU: by the products' size in the format that would keep them (float32 4 bytes a pair, a
    screen's 2). CUDA keeps 16."""
    three_mib = 3 / 1024  # 1024^2 pairs: 4 MiB in float32, 2 MiB screened
    assert default_k(1024, 1024, "cpu", "off") == 16
    assert default_k(1024, 1024, "cpu", "off", products_gib=0) == K_STREAMED == 32
    assert default_k(1024, 1024, "cpu", "off", products_gib=three_mib) == 32
    assert default_k(1024, 1024, "cpu", "bf16", products_gib=three_mib) == 16
    assert default_k(65536, 65536, "cpu", "int8") == 32  # 8 GiB of products: streamed
    assert default_k(65536, 65536, "cuda") == 16  # CUDA streams too, unmeasured with 32


@pytest.mark.parametrize("products_gib, k, m", [(None, 16, 16), (0, 32, 64)])
def test_certified_assign_takes_default_k(products_gib, k, m):
    """Without ``k`` the candidate pass keeps :func:`default_k` per list; rounds then add k
    pairs per row where rows are kept, ``max(2k, 64)`` where they stream."""
    A, B = _pair(400, 32, 5)
    res = certified_assign(A, B, block=128, products_gib=products_gib, screen="off")
    assert (res.info["k"], res.info["add_per_row"]) == (k, m)
    assert res.status == "optimal"
    np.testing.assert_array_equal(res.perm, _dense(A, B).perm)


@pytest.mark.parametrize("screen", ["off", "bf16", "int8"])
@pytest.mark.parametrize("n_b,mem_gib", [(200, None), (2100, 1e-6)])
def test_candidate_graph_bounds_hold_for_every_left_out_pair(screen, n_b, mem_gib):
    """Also with the columns cut into tiles of 1024 (c0 = 0, 1024, 2048): the kernels index a
    tile's columns from its first."""
    A, B = _pair(200, 12, 3)
    B = np.concatenate([B, _pair(n_b - 200, 12, 4)[1]]) if n_b > 200 else B
    k = 5
    g = candidate_graph(A, B, k, block=64, screen=screen, mem_gib=mem_gib)
    C = cost_matrix(A, B).astype(np.float64)
    coo = g.costs.tocoo()
    np.testing.assert_allclose(coo.data, C[coo.row, coo.col], rtol=1e-6)
    assert np.all(np.diff(g.costs.indptr) >= k)
    out = np.ones_like(C, dtype=bool)
    out[coo.row, coo.col] = False
    slack = 1e-6 * (g.row_sq[:, None] + g.col_sq[None, :])
    bound1 = np.maximum(g.row_kth[:, None], g.col_kth[None, :])
    bound2 = (g.row_sq[:, None] + g.col_sq[None, :]
              + np.maximum(g.row_kth_ip[:, None], g.col_kth_ip[None, :]))
    assert np.all((C - bound1 + slack)[out] >= 0)
    assert np.all((C - bound2 + slack)[out] >= 0)
    # the k-th values are the true k-th smallest costs (screened: lower bounds of them, close)
    for kth, true in ((g.row_kth, np.sort(C, 1)[:, k - 1]), (g.col_kth, np.sort(C, 0)[k - 1])):
        if screen == "off":
            np.testing.assert_allclose(kth, true, rtol=1e-6)
        else:
            assert np.all(kth <= true) and np.all(kth >= true - 0.1 * np.max(true))


@pytest.mark.parametrize("screen", ["off", "bf16", "int8"])
def test_certificate_streams_rows_in_column_tiles(screen):
    """Rows streamed through the GEMM (products not kept) in tiles of 1024 columns, so the
    kernels see c0 = 0, 1024 and 2048: the answer is the dense optimum."""
    A, B = _pair(300, 12, 5)
    B = np.concatenate([B, _pair(1800, 12, 6)[1]])
    res = certified_assign(A, B, k=2, screen=screen, products_gib=0, mem_gib=1e-6)
    assert res.status == "optimal" and res.info["rows_streamed"] > 0
    np.testing.assert_array_equal(res.perm, assign_dense(cost_matrix(A, B)).perm)


def _int8_products(scr: Screen, X: np.ndarray) -> np.ndarray:
    """The int8 screen's products of X's rows with B's, from its own rounding, in float64:
    each group's exact integer products times the two scales."""
    (QA, sa), _ = scr.fmt.round(X)
    (QB, sb), _ = scr.fmt.round(scr.B)
    return sum(sa[:, [g]] * sb[:, g] * (QA[g].double() @ QB[g].double().T).numpy()
               for g in range(len(QA)))


def _bf16_values(H: np.ndarray) -> np.ndarray:
    return (H.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.parametrize("d", [8, 4609])
def test_screen_products_bound_the_exact_ones_from_both_sides(d, precision):
    """``upper_products`` is an upper bound of a.b in float64 and of the float32 GEMM's; for -A
    (bf16 and int8 rounding are symmetric) it gives the lower end. Nearly parallel vectors of
    mixed norms make the sums long and one-signed, the case that strains the float32
    accumulation; the last dimension, 100x the others, is an int8 group of its own."""
    rng = np.random.default_rng(d)
    base = rng.standard_normal((1, d)) + rng.standard_normal((96, d)) * 0.05
    base[:, -1] *= 100
    A = (base[:48] * rng.lognormal(0, 1, (48, 1))).astype(np.float32)
    B = (base[48:] * rng.lognormal(0, 1, (48, 1))).astype(np.float32)
    exact = A.astype(np.float64) @ B.astype(np.float64).T
    gemm32 = (A @ B.T).astype(np.float64)
    for sign in (1.0, -1.0):
        X = np.ascontiguousarray(sign * A)
        U = {}
        for keep in (False, True):  # blocks through a buffer, or written in place in scr.H
            scr = Screen(X, B, keep=keep, precision=precision)
            U[keep] = np.zeros_like(exact)
            for rows, c0, blk in upper_products(scr, block=16, mem_gib=2 ** -14):
                U[keep][rows, c0:c0 + blk.shape[1]] = blk
        assert np.all(U[False] >= sign * exact) and np.all(U[False] >= sign * gemm32)
        assert np.max((U[False] - sign * exact) / np.abs(exact)) < 0.05  # a bound, not wild
        np.testing.assert_array_equal(U[True], U[False])
        assert scr.kept.all()
        if precision == "bf16":
            np.testing.assert_array_equal(scr.H, bits(to_bf16(X) @ to_bf16(B).T))
        else:  # the groups' products, rounded to float32 and to bf16 (half an ulp, 2**-8)
            assert len(scr.fmt.starts) == 3  # the large last dimension alone
            ref = _int8_products(scr, X)
            err = np.abs(_bf16_values(scr.H) - ref)
            assert np.all(err <= 2.0 ** -8 * (1 + 2.0 ** -15) * np.abs(ref))


def test_int8_groups_dimensions_by_scale():
    """Dimensions are grouped by their scale over the rows of A and B, at jumps of more than 4x
    (at most 4 groups); one scale per row and group keeps small dimensions from rounding to
    nothing next to large ones, and a group of one dimension (int8 GEMM with a zero column:
    torch's _int_mm gets an inner dimension of 1 wrong) multiplies exactly."""
    rng = np.random.default_rng(0)
    scale = np.array([1.0] * 6 + [0.01] * 5 + [100.0] + [3.0] * 4)  # 1 and 3: one group
    A = (rng.standard_normal((40, 16)) * scale).astype(np.float32)
    B = (rng.standard_normal((30, 16)) * scale).astype(np.float32)
    groups = dim_groups(A, B)
    assert sorted(sorted(g.tolist()) for g in groups) == [
        [0, 1, 2, 3, 4, 5, 12, 13, 14, 15], [6, 7, 8, 9, 10], [11]]
    assert len(dim_groups(A, B, max_groups=2)) == 2  # the largest jump only
    fmt = Int8(A, B)
    (_, sa), norms = fmt.round(A)
    assert sa.shape == (40, 3)
    assert np.all(norms[2] <= 0.01 * norms[0])  # |a - a'| small next to |a|
    scr = Screen(A, B, precision="int8")
    exact = A.astype(np.float64) @ B.astype(np.float64).T
    ref = _int8_products(scr, A)
    err = norms[2][:, None] * np.linalg.norm(B, axis=1) + norms[1][:, None] * fmt.round(B)[1][2]
    assert np.all(np.abs(exact - ref) <= err * (1 + 1e-12))  # the bound's terms hold
    H = np.zeros((40, 30), np.uint16)  # the screen's GEMM (torch's _int_mm) gives those products
    for rows, c0, blk in scr.products(scr.rows()[0], 16, 30):
        H[rows, c0:c0 + blk.shape[1]] = blk
    assert np.all(np.abs(_bf16_values(H) - ref) <= 2.0 ** -8 * (1 + 2.0 ** -15) * np.abs(ref))


def test_screen_precision_follows_the_hardware(monkeypatch):
    """"auto" screens in bf16 where the CPU multiplies bf16, else in int8 where torch
    multiplies int8, else not at all; CUDA never screens; "int8" without int8 support and
    unknown names are errors."""
    for bf16, int8, want in ((True, True, "bf16"), (False, True, "int8"), (False, False, None)):
        monkeypatch.setattr(screen_mod, "bf16_fast", lambda v=bf16: v)
        monkeypatch.setattr(screen_mod, "int8_available", lambda v=int8: v)
        assert screen_precision("auto", True) == want
        assert screen_precision("auto", False) is None
        assert screen_precision("int8", False) is None
        assert screen_precision("off", True) is None
        assert screen_precision("bf16", True) == "bf16"
        if int8:
            assert screen_precision("int8", True) == "int8"
        else:
            with pytest.raises(SAEMatchError, match="int8"):
                screen_precision("int8", True)
    with pytest.raises(SAEMatchError, match="screen must be"):
        screen_precision("fp8", True)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_screen_bounds_hold_in_column_tiles(precision):
    """A tile past the first (c0 = 1024) gets its own columns' error terms: the first 1024
    columns are 1e-3 the norm of the rest, so their terms would not cover the rounding."""
    rng = np.random.default_rng(1)
    A = rng.standard_normal((8, 64)).astype(np.float32)
    B = rng.standard_normal((1100, 64))
    B[:1024] *= 1e-3
    B = B.astype(np.float32)
    exact = A.astype(np.float64) @ B.astype(np.float64).T
    U = np.zeros_like(exact)
    starts = set()
    for rows, c0, blk in upper_products(Screen(A, B, precision=precision), block=16,
                                        mem_gib=2 ** -20):
        U[rows, c0:c0 + blk.shape[1]] = blk
        starts.add(c0)
    assert starts == {0, 1024} and np.all(U >= exact)


def test_bf16_screen_falls_back_to_float32_for_rows_it_cannot_settle():
    """At optimal duals with m = 1, rows with several pairs inside the bf16 error band and no
    proven violation are streamed again in float32; the certificate still passes."""
    A, B = _pair(120, 4, 9)
    B = np.concatenate([B[:60], B[:60] + 1e-4], dtype=np.float32)  # near-duplicate columns
    graph = candidate_graph(A, B, 2, screen="off")
    _, u, v = certified_assign(A, B, graph=graph, return_duals=True, screen="off")
    chk = _check(A, B, graph, u, v, TOL, snaps=None, m=1, block=16, device="cpu", mem_gib=None,
                 deadline=None, screen=Screen(A, B))
    assert chk.ok and chk.pairs_screened > 0 and chk.pairs_streamed > 0


@pytest.mark.parametrize("mode", list(MODES))
def test_certificate_catches_and_repairs_a_non_optimal_sparse_answer(mode):
    A, B = _gadgets(12)
    graph = candidate_graph(A, B, 1, random_k=0)
    ref = _dense(A, B)
    sparse_only = _sparse_only_objective(graph)
    assert sparse_only > ref.objective + 12 * 0.2  # the first sparse answer is wrong
    res = certified_assign(A, B, graph=graph, **MODES[mode])
    assert res.status == "optimal"
    assert res.info["rounds"] > 1 and res.info["violations_added"] >= 12
    assert res.objective == pytest.approx(ref.objective, abs=_ulps(A, B))
    np.testing.assert_array_equal(res.perm, ref.perm)


def test_certificate_rejects_wrong_duals():
    A, B = _gadgets(12, seed=1)
    graph = candidate_graph(A, B, 1, random_k=0)
    ref = _dense(A, B)
    res, u, v = certified_assign(A, B, graph=graph, return_duals=True)
    good = check_duals(A, B, graph, u, v)
    assert good.ok and good.violations == 0 and good.graph_violations == 0
    # within the certificate's tolerance: n * tau * (|a|^2 + |b|^2) with unit vectors
    lb = good.lower_bound
    assert ref.objective - 24 * 2 * res.info["tol"] <= lb <= ref.objective + _ulps(A, B)
    # duals that are optimal on the candidate graph alone but not for the dense problem:
    # no graph edge violates, so only streaming the left-out pairs can expose them
    _, u0, v0 = certified_assign(A, B, graph=graph, return_duals=True, time_limit=0)
    bad = check_duals(A, B, graph, u0, v0)
    assert bad.graph_violations == 0
    assert not bad.ok and bad.violations >= 12
    assert bad.lower_bound <= ref.objective + _ulps(A, B)  # still a valid lower bound
    # shifting one dual up breaks the graph edges of that row too
    u1 = u.copy()
    u1[3] += 1.0
    worse = check_duals(A, B, graph, u1, v)
    assert not worse.ok and worse.graph_violations > 0 and worse.violations > 0


def test_ties_from_duplicated_features():
    A, B = _pair(120, 10, 4)
    A[60:] = A[:60]  # every layer-A feature twice
    B[90:] = B[60:90]
    res = certified_assign(A, B, k=4)
    ref = _dense(A, B)
    assert res.status == "optimal"
    assert res.objective == pytest.approx(ref.objective, abs=_ulps(A, B))
    np.testing.assert_array_equal(np.sort(res.perm), np.arange(120))


def test_k_too_small_for_any_perfect_matching():
    rng = np.random.default_rng(5)
    n, d = 80, 100
    e1 = np.zeros(d)
    e1[0] = 1.0
    A = e1 + 0.01 * rng.standard_normal((n, d))  # every row prefers column 0, by cost and by
    B = 0.5 * e1 + 3.0 * np.linalg.qr(rng.standard_normal((d, d)))[0][:n]  # inner product
    B[:, 0] = 0.5
    B[0] = e1
    A, B = A.astype(np.float32), B.astype(np.float32)
    graph = candidate_graph(A, B, 1, random_k=0)
    assert np.all(graph.costs.tocsc()[:, 0].getnnz() >= 1)
    with pytest.raises(ValueError):  # scipy: no full matching on the candidate graph
        _sparse_only_objective(graph)
    res = certified_assign(A, B, graph=graph)
    ref = _dense(A, B)
    assert res.status == "optimal" and res.info["grow_rounds"] >= 1
    assert res.objective == pytest.approx(ref.objective, abs=_ulps(A, B))
    # random partners (a union of random permutations) always hold a perfect matching
    spread = candidate_graph(A, B, 1, random_k=2)
    assert spread.nnz > graph.nnz
    _sparse_only_objective(spread)  # raises if there is no full matching
    res = certified_assign(A, B, graph=spread)
    assert res.status == "optimal" and res.info["grow_rounds"] == 0
    assert res.objective == pytest.approx(ref.objective, abs=_ulps(A, B))
    np.testing.assert_array_equal(res.perm, ref.perm)


@pytest.mark.parametrize("mode", list(MODES))
def test_time_limit_returns_valid_bound(mode):
    A, B = _gadgets(10, seed=2)
    ref = _dense(A, B)
    res = certified_assign(A, B, k=1, random_k=0, time_limit=0, **MODES[mode])
    assert res.status == "time_limit"
    np.testing.assert_array_equal(np.sort(res.perm), np.arange(20))
    assert res.gap > 0.1
    assert res.objective - res.gap <= ref.objective + _ulps(A, B)  # lower bound is valid


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_warm_restart_with_row_reduction_is_optimal_on_the_grown_graph(seed):
    """After edges were added, a warm restart with augmenting row reduction (what the driver asks
    for when most of the matching is stale) ends at the optimum of the new graph (scipy's
    sparse matching as the reference) with duals that prove it: reduced costs >= 0 on every edge,
    0 on the matching. Row reduction may only lower column potentials."""
    rng = np.random.default_rng(seed)
    n = 400
    r = np.concatenate([np.arange(n), np.repeat(np.arange(n), 6)])  # the diagonal: a matching
    c = np.concatenate([np.arange(n), rng.integers(0, n, 6 * n)])
    g = build_csr(r, c, (0.1 + rng.random(len(r))).astype(np.float32), (n, n))
    st = LapState.empty(n, n)
    assert solve(g, st)[0] == 0
    nr, nc = rng.integers(0, n, 3 * n), rng.integers(0, n, 3 * n)
    g = add_edges(g, nr, nc, (0.1 * rng.random(3 * n)).astype(np.float32))  # cheap: most go stale
    v_before = st.v.copy()
    nfail, _, steps = solve(g, st, reduce=True)
    assert nfail == 0 and steps < 20 * n
    assert np.all(st.v <= v_before + 1e-12)
    rows = np.repeat(np.arange(n), np.diff(g.indptr))
    reduced = g.data - st.u[rows] - st.v[g.indices]
    assert reduced.min() >= -1e-9
    on_matching = g.indices == st.col4row[rows]
    np.testing.assert_allclose(reduced[on_matching], 0, atol=1e-9)
    np.testing.assert_array_equal(st.row4col[st.col4row], np.arange(n))
    ref_rows, ref_cols = min_weight_full_bipartite_matching(g)
    best = np.asarray(g[ref_rows, ref_cols], np.float64).sum()
    assert np.asarray(g[np.arange(n), st.col4row], np.float64).sum() == pytest.approx(best,
                                                                                       rel=1e-12)
    assert st.u.sum() + st.v.sum() == pytest.approx(best, rel=1e-9)


def test_add_edges_merges_like_a_rebuild():
    """Merging new pairs into the sorted graph gives the CSR a rebuild from all pairs gives:
    stored pairs keep their cost, the first of repeated new pairs counts, rows stay sorted."""
    rng = np.random.default_rng(0)
    n = 50
    r, c = rng.integers(0, n, 400), rng.integers(0, n, 400)
    g = build_csr(r, c, rng.random(400, dtype=np.float32), (n, n))
    nr, nc = rng.integers(0, n, 300), rng.integers(0, n, 300)
    nr[:20], nc[:20] = r[:20], c[:20]  # already stored
    nr[40:60], nc[40:60] = nr[20:40], nc[20:40]  # repeated among the new
    nv = rng.random(300, dtype=np.float32)
    got = add_edges(g, nr, nc, nv)
    coo = g.tocoo()
    ref = build_csr(np.concatenate([coo.row, nr]), np.concatenate([coo.col, nc]),
                    np.concatenate([coo.data, nv]), (n, n))
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name))
    assert got.has_sorted_indices and got.nnz < g.nnz + 300


def test_candidates_hdf5_round_trip(tmp_path):
    A, B = _pair(90, 8, 6)
    graph = candidate_graph(A, B, 3)
    path = tmp_path / "cand.h5"
    write_candidates(path, graph, {"layer_a": 3, "variant": "folded"})
    back = read_candidates(path)
    assert back.k == 3 and back.nnz == graph.nnz
    assert (back.costs != graph.costs).nnz == 0
    for name in ("row_kth", "col_kth", "row_kth_ip", "col_kth_ip", "row_sq", "col_sq"):
        np.testing.assert_array_equal(getattr(back, name), getattr(graph, name))
    with h5py.File(path, "r") as h5:
        assert h5.attrs["variant"] == "folded"
    a1, a2 = certified_assign(A, B, graph=graph), certified_assign(A, B, graph=back)
    np.testing.assert_array_equal(a1.perm, a2.perm)
    with h5py.File(path, "r+") as h5:
        h5["indices"][0] = 10_000
    with pytest.raises(SAEMatchError, match="inconsistent"):
        read_candidates(path)


def test_bad_inputs():
    A, B = _pair(10, 4, 7)
    with pytest.raises(SAEMatchError):
        certified_assign(A, B[:9])
    with pytest.raises(SAEMatchError):
        candidate_graph(A, B, 0)
    with pytest.raises(SAEMatchError, match="screen"):
        certified_assign(A, B, screen="fp8")
    with pytest.raises(SAEMatchError):
        certified_assign(A, B, graph=candidate_graph(A[:8], B[:8], 2))


@pytest.mark.parametrize("mode", ["streamed", "kept", "bf16", "bf16-kept", "int8", "int8-kept"])
def test_certificate_counts_every_violation_exactly(mode):
    """Duals that make most pairs violate: the count, streamed through the GEMM, read from the
    kept products or screened in bf16 or int8 (with room for every open pair; its products
    computed now or kept), must match a dense recount."""
    A, B = _pair(70, 6, 8)
    graph = candidate_graph(A, B, 2)
    C = cost_matrix(A, B).astype(np.float64)
    u, v = np.median(C, axis=1), np.zeros(70)
    kw = dict(snaps=None, block=16, device="cpu", mem_gib=None, deadline=None)
    if mode == "kept":
        chk = _check(A, B, graph, u, v, TOL, m=1, store=ProductStore.allocate(70, 70), **kw)
    elif mode.startswith(("bf16", "int8")):
        scr = Screen(A, B, keep=mode.endswith("-kept"), precision=mode.split("-")[0])
        chk = _check(A, B, graph, u, v, TOL, m=70, screen=scr, **kw)
        assert chk.pairs_screened > 0 and chk.pairs_streamed == 0
        assert scr.kept.sum() == (chk.rows_streamed if scr.H is not None else 0)
    else:
        chk = check_duals(A, B, graph, u, v)
    outside = np.ones_like(C, dtype=bool)
    coo = graph.costs.tocoo()
    outside[coo.row, coo.col] = False
    tol = 2.0 ** -21 * (graph.row_sq[:, None] + graph.col_sq[None, :])
    expected = int(((C - u[:, None] - v[None, :] + tol < 0) & outside).sum())
    assert expected > 1000
    assert not chk.ok and chk.violations == expected
    assert chk.lower_bound <= _dense(A, B).objective


@pytest.mark.parametrize("screen,passes", [("off", "passes"), ("bf16", "screen_passes"),
                                           ("int8", "screen_passes")])
def test_kept_products_make_the_candidate_pass_the_only_gemm_pass(screen, passes):
    """With the products kept (float32, or the bf16 screen's), the candidate pass computes
    A @ B.T once and every certificate round re-reads it: GEMM work is exactly one pass, the
    answer the same as streaming's."""
    A, B = _pair(300, 12, 4)
    kept = certified_assign(A, B, k=2, random_k=1, screen=screen)
    streamed = certified_assign(A, B, k=2, random_k=1, products_gib=0, screen=screen)
    assert kept.status == streamed.status == "optimal"
    assert kept.info["rounds"] > 1 and kept.info["rows_streamed"] > 0
    assert kept.info[passes] == 1.0 and streamed.info[passes] > 1.0
    np.testing.assert_array_equal(kept.perm, streamed.perm)
    np.testing.assert_array_equal(kept.perm, _dense(A, B).perm)


def test_certified_assign_pauses_the_collector_and_restores_it(monkeypatch):
    """The collector is off while the solver runs and back as it was afterwards, also after an
    error; a caller that turned it off keeps it off."""
    import gc

    from saematch.certified import driver

    seen = []

    def solve_seeing_gc(*args, **kwargs):
        seen.append(gc.isenabled())
        return solve(*args, **kwargs)

    monkeypatch.setattr(driver, "solve", solve_seeing_gc)
    A, B = _pair(40, 8, 3)
    assert gc.isenabled()
    certified_assign(A, B, k=2)
    assert seen and not any(seen) and gc.isenabled()
    with pytest.raises(SAEMatchError):
        certified_assign(A, B, k=2, tol=-1.0)
    assert gc.isenabled()
    gc.disable()
    try:
        certified_assign(A, B, k=2)
        assert not gc.isenabled()
    finally:
        gc.enable()
