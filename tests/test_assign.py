"""Exact assignment: optimality against brute force, planted recovery, permutation algebra."""
import itertools

import numpy as np
import pytest
from conftest import random_sae

from saematch.assign import assign_dense, compose, permute_codes, read_assignment, write_assignment
from saematch.costs import cost_matrix
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
    write_assignment(tmp_path / "bad.h5", result, {})
    with pytest.raises(SAEMatchError, match="bad.h5: 'perm' is not a permutation"):
        read_assignment(tmp_path / "bad.h5")
