"""Certified sparse assignment (saematch.certified) against dense scipy on small problems."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from saematch.assign import assign_dense
from saematch.certified import (
    TOL,
    candidate_graph,
    certified_assign,
    check_duals,
    read_candidates,
    write_candidates,
)
from saematch.certified.certificate import _check
from saematch.certified.products import ProductStore
from saematch.costs import cost_matrix
from saematch.errors import SAEMatchError


def _pair(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random vectors with lognormal norms, so the raw-cost ranking has hubs."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d)) * rng.lognormal(0, 0.5, (n, 1))
    B = rng.standard_normal((n, d)) * rng.lognormal(0, 0.5, (n, 1))
    return A.astype(np.float32), B.astype(np.float32)


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


# products_gib: None keeps A @ B.T in memory (these sizes always fit), 0 streams every round's
# rows through the GEMM again, as at widths whose products do not fit
@pytest.mark.parametrize("products_gib", [None, 0])
@pytest.mark.parametrize("n,d,k,seed", [(60, 8, 4, 0), (250, 16, 8, 1), (400, 32, 16, 2)])
def test_matches_dense_scipy(n, d, k, seed, products_gib):
    A, B = _pair(n, d, seed)
    res = certified_assign(A, B, k=k, block=128, products_gib=products_gib)
    ref = _dense(A, B)
    assert res.solver == "certified" and res.status == "optimal"
    assert res.objective == pytest.approx(ref.objective, rel=1e-9)
    np.testing.assert_array_equal(res.perm, ref.perm)  # continuous data: unique optimum
    assert 0.0 <= res.gap <= 1e-9 * ref.objective
    assert set(res.info) >= {"rounds", "k", "edges", "violations_added", "t_total"}
    assert all(np.isscalar(v) for v in res.info.values())


def test_candidate_graph_bounds_hold_for_every_left_out_pair():
    A, B = _pair(200, 12, 3)
    k = 5
    g = candidate_graph(A, B, k, block=64)
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
    # the k-th values are the true k-th smallest costs
    np.testing.assert_allclose(g.row_kth, np.sort(C, 1)[:, k - 1], rtol=1e-6)
    np.testing.assert_allclose(g.col_kth, np.sort(C, 0)[k - 1], rtol=1e-6)


@pytest.mark.parametrize("products_gib", [None, 0])
def test_certificate_catches_and_repairs_a_non_optimal_sparse_answer(products_gib):
    A, B = _gadgets(12)
    graph = candidate_graph(A, B, 1, random_k=0)
    ref = _dense(A, B)
    sparse_only = _sparse_only_objective(graph)
    assert sparse_only > ref.objective + 12 * 0.2  # the first sparse answer is wrong
    res = certified_assign(A, B, graph=graph, products_gib=products_gib)
    assert res.status == "optimal"
    assert res.info["rounds"] > 1 and res.info["violations_added"] >= 12
    assert res.objective == pytest.approx(ref.objective, rel=1e-7)
    np.testing.assert_array_equal(res.perm, ref.perm)


def test_certificate_rejects_wrong_duals():
    A, B = _gadgets(12, seed=1)
    graph = candidate_graph(A, B, 1, random_k=0)
    ref = _dense(A, B)
    res, u, v = certified_assign(A, B, graph=graph, return_duals=True)
    good = check_duals(A, B, graph, u, v)
    assert good.ok and good.violations == 0 and good.graph_violations == 0
    # within the certificate's tolerance: n * tau * (|a|^2 + |b|^2) with unit vectors
    assert ref.objective - 24 * 2 * res.info["tol"] <= good.lower_bound <= ref.objective + 1e-9
    # duals that are optimal on the candidate graph alone but not for the dense problem:
    # no graph edge violates, so only streaming the left-out pairs can expose them
    _, u0, v0 = certified_assign(A, B, graph=graph, return_duals=True, time_limit=0)
    bad = check_duals(A, B, graph, u0, v0)
    assert bad.graph_violations == 0
    assert not bad.ok and bad.violations >= 12
    assert bad.lower_bound <= ref.objective + 1e-9  # still a valid lower bound
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
    assert res.objective == pytest.approx(ref.objective, rel=1e-9)
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
    assert res.objective == pytest.approx(ref.objective, rel=1e-9)
    # random partners (a union of random permutations) always hold a perfect matching
    spread = candidate_graph(A, B, 1, random_k=2)
    assert spread.nnz > graph.nnz
    _sparse_only_objective(spread)  # raises if there is no full matching
    res = certified_assign(A, B, graph=spread)
    assert res.status == "optimal" and res.info["grow_rounds"] == 0
    assert res.objective == pytest.approx(ref.objective, rel=1e-9)
    np.testing.assert_array_equal(res.perm, ref.perm)


def test_time_limit_returns_valid_bound():
    A, B = _gadgets(10, seed=2)
    ref = _dense(A, B)
    res = certified_assign(A, B, k=1, random_k=0, time_limit=0)
    assert res.status == "time_limit"
    np.testing.assert_array_equal(np.sort(res.perm), np.arange(20))
    assert res.gap > 0.1
    assert res.objective - res.gap <= ref.objective + 1e-9  # lower bound is valid


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
    with pytest.raises(SAEMatchError):
        certified_assign(A, B, graph=candidate_graph(A[:8], B[:8], 2))


@pytest.mark.parametrize("kept", [False, True])
def test_certificate_counts_every_violation_exactly(kept):
    """Duals that make most pairs violate: the count, streamed through the GEMM or read from the
    kept products, must match a dense recount."""
    A, B = _pair(70, 6, 8)
    graph = candidate_graph(A, B, 2)
    C = cost_matrix(A, B).astype(np.float64)
    u, v = np.median(C, axis=1), np.zeros(70)
    if kept:
        chk = _check(A, B, graph, u, v, TOL, snaps=None, m=1, block=16, device="cpu",
                     mem_gib=None, deadline=None, store=ProductStore.allocate(70, 70))
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


def test_kept_products_make_the_candidate_pass_the_only_gemm_pass():
    """With the products kept, the candidate pass computes A @ B.T once and every certificate
    round re-reads it: GEMM work is exactly one pass, the answer the same as streaming's."""
    A, B = _pair(300, 12, 4)
    kept = certified_assign(A, B, k=2, random_k=1)
    streamed = certified_assign(A, B, k=2, random_k=1, products_gib=0)
    assert kept.status == streamed.status == "optimal"
    assert kept.info["rounds"] > 1 and kept.info["rows_streamed"] > 0
    assert kept.info["passes"] == 1.0 and streamed.info["passes"] > 1.0
    np.testing.assert_array_equal(kept.perm, streamed.perm)
    np.testing.assert_array_equal(kept.perm, _dense(A, B).perm)
