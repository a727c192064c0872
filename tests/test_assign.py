"""Exact assignment: optimality against brute force, planted recovery, permutation algebra."""
import itertools

import numpy as np
import pytest
from conftest import REPO, random_sae

from saematch.assign import (
    Assignment,
    assign_dense,
    compose,
    permute_codes,
    read_assignment,
    top1,
    write_assignment,
)
from saematch.costs import cost_matrix, nearest
from saematch.errors import SAEMatchError
from saematch.features import Variant, feature_vectors, variant_vectors
from saematch.synthetic import PlantedSpec, planted_layer, true_permutation


def brute_force(cost: np.ndarray) -> float:
    n = len(cost)
    return min(cost[np.arange(n), list(p)].sum() for p in itertools.permutations(range(n)))


@pytest.mark.parametrize("seed", range(6))
def test_dense_lap_is_optimal_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 7
    cost = rng.random((n, n)) if seed % 2 else rng.integers(0, 3, (n, n)).astype(float)  # ties
    result = assign_dense(cost)
    assert sorted(result.perm) == list(range(n))
    assert result.objective == pytest.approx(brute_force(cost), abs=1e-12)
    np.testing.assert_array_equal(result.match_cost, cost[np.arange(n), result.perm])


def test_dense_lap_on_real_cost_matrix_matches_brute_force():
    a, b = random_sae(n=8, d=6, seed=1), random_sae(n=8, d=6, seed=2)
    A, B = variant_vectors(a, b, Variant("folded"))
    cost = cost_matrix(A, B)
    assert assign_dense(cost).objective == pytest.approx(brute_force(cost.astype(float)), rel=1e-9)


@pytest.mark.parametrize("variant", [
    Variant("folded"), Variant("unfolded", folded=False),
    Variant("cosine", terms=("decoder",), folded=False, metric="cosine")])
def test_planted_permutation_is_recovered(variant):
    spec = PlantedSpec(n_features=300, d_model=48, seed=4, survive=0.6, noise=0.4)
    (a, _), (b, origin) = planted_layer(spec, 2), planted_layer(spec, 3)
    perm = assign_dense(cost_matrix(*variant_vectors(a, b, variant))).perm
    parents, children = true_permutation(origin)
    assert 100 < len(parents) < 250  # some features die, some persist
    assert (perm[parents] == children).mean() > 0.97
    # the identity permutation recovers essentially nothing
    assert (parents == children).mean() < 0.05


def test_permute_codes_and_compose_follow_the_convention():
    rng = np.random.default_rng(0)
    p_ab, p_bc = rng.permutation(10), rng.permutation(10)
    f = rng.random((3, 10))
    g = permute_codes(f, p_ab)
    for i in range(10):
        np.testing.assert_array_equal(g[:, p_ab[i]], f[:, i])
    p_ac = compose(p_ab, p_bc)
    np.testing.assert_array_equal(permute_codes(g, p_bc), permute_codes(f, p_ac))
    assert all(p_ac[i] == p_bc[p_ab[i]] for i in range(10))


def test_feature_vectors_shapes():
    sae = random_sae(n=20, d=5)
    assert feature_vectors(sae).shape == (20, 11)
    assert feature_vectors(sae, ("decoder",)).shape == (20, 5)
    np.testing.assert_allclose(
        np.linalg.norm(feature_vectors(sae, normalize=True), axis=1), 1, rtol=1e-6)


def test_assignment_file_roundtrip_and_validation(tmp_path):
    cost = np.random.default_rng(1).random((30, 30))
    result = assign_dense(cost)
    write_assignment(tmp_path / "a.h5", result, {"variant": "folded"})
    back = read_assignment(tmp_path / "a.h5")
    np.testing.assert_array_equal(back.perm, result.perm)
    assert back.objective == pytest.approx(result.objective)
    result.perm[0] = result.perm[1]
    with pytest.raises(SAEMatchError, match="bad.h5: 'perm' is not a permutation"):
        write_assignment(tmp_path / "bad.h5", result, {})  # refused before anything is written
    assert not (tmp_path / "bad.h5").exists()
    import h5py

    with h5py.File(tmp_path / "a.h5", "r+") as h5:  # a file damaged after it was written
        h5["perm"][0] = h5["perm"][1]
    with pytest.raises(SAEMatchError, match="a.h5: 'perm' is not a permutation"):
        read_assignment(tmp_path / "a.h5")


@pytest.mark.parametrize("seed", range(4))
def test_rectangular_dense_lap_is_optimal_against_brute_force(seed):
    """n_a < n_b: every row gets a distinct column, at the least total cost over all 840
    injective maps of 4 rows into 7 columns (ties included)."""
    rng = np.random.default_rng(seed)
    cost = rng.random((4, 7)) if seed % 2 else rng.integers(0, 3, (4, 7)).astype(float)
    result = assign_dense(cost)
    best = min(cost[np.arange(4), list(p)].sum() for p in itertools.permutations(range(7), 4))
    assert result.kind == "injective" and result.n_b == 7
    assert len(set(result.perm)) == 4 and result.objective == pytest.approx(best, abs=1e-12)
    np.testing.assert_array_equal(result.match_cost, cost[np.arange(4), result.perm])
    with pytest.raises(SAEMatchError, match="n_a <= n_b"):
        assign_dense(cost.T)
    assert assign_dense(cost[:, :4]).kind == "permutation"


def test_map_kinds_roundtrip_and_are_validated_on_read(tmp_path):
    import h5py

    maps = {"injective": Assignment(np.array([4, 0, 2]), np.zeros(3), "dense", kind="injective",
                                    n_b=5),
            "many_to_one": Assignment(np.array([1, 1, 0, 1]), np.zeros(4), "top1",
                                      kind="many_to_one", n_b=2)}
    for name, m in maps.items():
        write_assignment(tmp_path / f"{name}.h5", m, {})
        back = read_assignment(tmp_path / f"{name}.h5")
        assert (back.kind, back.n_b) == (m.kind, m.n_b)
        np.testing.assert_array_equal(back.perm, m.perm)
    damage = {"injective": (lambda h5: h5["perm"].__setitem__(1, 4), "not injective"),
              "many_to_one": (lambda h5: h5["perm"].__setitem__(0, 2), "outside 0..1")}
    for name, (change, message) in damage.items():
        with h5py.File(tmp_path / f"{name}.h5", "r+") as h5:
            change(h5)
        with pytest.raises(SAEMatchError, match=message):
            read_assignment(tmp_path / f"{name}.h5")
    with h5py.File(tmp_path / "old.h5", "w") as h5:  # written before kinds existed
        h5["perm"], h5["match_cost"] = np.array([2, 0, 1]), np.zeros(3)
        h5.attrs.update(solver="dense", status="optimal", gap=0.0)
    assert read_assignment(tmp_path / "old.h5").kind == "permutation"


def test_many_to_one_codes_add_up_and_decode_linearly():
    """permute_codes adds the codes of features sent to one partner, so decoding with B equals
    decoding every A feature with its partner's decoder row."""
    rng = np.random.default_rng(3)
    f = rng.random((5, 6)).astype(np.float32)
    perm = np.array([2, 2, 0, 3, 2, 0])
    g = permute_codes(f, perm)
    onehot = np.zeros((6, 6), np.float32)
    onehot[np.arange(6), perm] = 1
    np.testing.assert_allclose(g, f @ onehot, rtol=1e-6)
    b = random_sae(n=6, d=4, seed=5)
    np.testing.assert_allclose(b.decode(g), f @ b.W_dec[perm] + b.b_dec, rtol=1e-5, atol=1e-6)
    inj = np.array([7, 1, 4])  # 3 features into a wider dictionary of 9
    h = permute_codes(f[:, :3], inj, n_b=9)
    assert h.shape == (5, 9) and not h[:, [0, 2, 3, 5, 6, 8]].any()
    np.testing.assert_array_equal(h[:, inj], f[:, :3])
    np.testing.assert_array_equal(compose(perm, perm), perm[perm])  # maps compose as functions


def test_top1_is_the_row_argmin_of_the_cost_matrix():
    a, b = random_sae(n=50, d=8, seed=1), random_sae(n=80, d=8, seed=2)
    A, B = variant_vectors(a, b, Variant("folded"), rectangular=True)
    cost = cost_matrix(A, B)
    res = top1(*nearest(A, B, block=16), n_b=len(B))
    np.testing.assert_array_equal(res.perm, cost.argmin(1))
    np.testing.assert_allclose(res.match_cost, cost.min(1), rtol=1e-6)
    assert res.kind == "many_to_one" and res.n_b == 80
    ties = np.zeros((3, 4), np.float32)  # all rows equal: every row's nearest is the first
    assert list(nearest(ties, ties[:1].repeat(4, 0))[0]) == [0, 0, 0]


def test_benchmark_compares_only_with_peers_that_found_the_optimum(monkeypatch):
    """A peer that returns a worse matching (lapmod on a thin graph) is no alternative at any
    speed: the benchmark's comparison line must pick the fastest exact peer."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from bench_assign import ratios

    row = dict(generator="gemma", n=8)
    results = [dict(row, method="gemm", wall=1.0),
               dict(row, method="dense", wall=4.0, wall_again=3.0, objective=10.0),
               dict(row, method="lapjv", wall=5.0, wall_again=4.5, objective=10.0),
               dict(row, method="lapmod", wall=2.0, wall_again=1.0, objective=10.2)]
    lines = ratios(results)
    assert any("lapmod not optimal" in x for x in lines)
    assert "gemma n=8, first call: saematch dense 4.0 s vs best peer lapjv 5.0 s: 1.25x" in lines
    assert "gemma n=8, again: saematch dense 3.0 s vs best peer lapjv 4.5 s: 1.50x" in lines


def test_benchmark_reports_medians_and_turns_of_repeated_runs(monkeypatch):
    """With ``--repeat`` the table and the comparison give each method's median run, the runs'
    range, and in how many turns saematch was the faster, its runs paired with the peer's by
    turn (the lower median, so the details are of a run that happened)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from bench_assign import aggregate, ratios, table

    row = dict(generator="persist", n=8, peak_rss=2 ** 30, objective=5.0)
    runs = []
    for turn, (ours, peer) in enumerate([(1.3, 2.0), (1.4, 1.2), (1.2, 1.9), (1.6, 2.2)]):
        runs += [dict(row, method="dense", wall=ours, wall_again=0.5 + turn, t_cost=turn,
                      t_call=ours, turn=turn),
                 dict(row, method="lapjv", wall=peer, t_cost=0.0, t_call=peer, turn=turn)]
    summary = aggregate(runs)
    dense = next(r for r in summary if r["method"] == "dense")
    assert dense["wall"] == 1.3 and dense["t_cost"] == 0 and dense["wall_again"] == 1.5
    assert dense["wall_runs"] == [1.3, 1.4, 1.2, 1.6]
    assert "| persist | 8 | dense | 1.3 (1.2–1.6) | 1.5 (0.5–3.5) |" in table(summary)
    assert ("persist n=8, first call: saematch dense 1.3 s vs best peer lapjv 1.9 s: 1.46x "
            "(medians of 4 runs; saematch faster in 3 of 4 turns)") in ratios(summary)
    failed = aggregate(runs + [dict(row, method="lapjv", error="rc=1", wall=0.1, turn=4)])
    assert next(r for r in failed if r["method"] == "lapjv")["error"] == "rc=1"
