"""Matched/unmatched calibration, and persistence chains through composed permutations."""
import numpy as np
import pytest
from conftest import random_sae

from saematch.assign import assign_dense, compose
from saematch.costs import cost_matrix
from saematch.features import Variant, variant_vectors
from saematch.metrics import pair_metrics
from saematch.persistence import chain_lengths, persistence_table
from saematch.synthetic import PlantedSpec, planted_layer


def match(a, b):
    return assign_dense(cost_matrix(*variant_vectors(a, b, Variant("folded")))).perm


def test_null_threshold_has_the_stated_false_positive_rate():
    a, b = random_sae(n=2000, d=16, seed=1), random_sae(n=2000, d=16, seed=2)
    perm = np.random.default_rng(9).permutation(2000)  # a random matching: the null itself
    _, s = pair_metrics(a, b, perm, alpha=0.05, null_samples=5, seed=0)
    assert s["frac_matched"] == pytest.approx(0.05, abs=0.015)


def test_planted_matches_are_called_matched_and_new_features_mostly_not():
    spec = PlantedSpec(n_features=400, d_model=32, seed=2, survive=0.6, noise=0.4)
    (a, _), (b, origin) = planted_layer(spec, 1), planted_layer(spec, 2)
    perm = match(a, b)
    arrays, s = pair_metrics(a, b, perm, origin=origin)
    assert s["planted_recovered"] == 1.0
    persists = np.zeros(400, bool)
    persists[origin[origin >= 0]] = True
    assert arrays["matched"][persists].mean() > 0.95
    assert arrays["matched"][~persists].mean() < 0.2
    assert s["mse_ratio_to_random"] < 0.5
    assert s["dec_cos_median"] > 0.8


def test_chain_lengths_by_hand():
    perms = [np.array([1, 0, 2]), np.array([2, 1, 0])]
    matched = [np.array([True, True, False]), np.array([True, False, True])]
    # layer 0: f0 -> 1 (matched) -> 1 (not matched): 1; f1 -> 0 -> 2: 2; f2 not matched: 0
    np.testing.assert_array_equal(chain_lengths(perms, matched), [[1, 2, 0], [1, 0, 1]])


def test_persistence_on_planted_family():
    spec = PlantedSpec(n_features=300, d_model=32, seed=5, survive=0.8, noise=0.3)
    saes, origins = zip(*(planted_layer(spec, layer) for layer in range(5)))
    perms = [match(saes[s], saes[s + 1]) for s in range(4)]
    matched = [pair_metrics(saes[s], saes[s + 1], perms[s])[0]["matched"] for s in range(4)]
    direct = {(s, s + 2): match(saes[s], saes[s + 2]) for s in range(3)}
    rows = persistence_table(list(saes), perms, matched, direct, max_distance=3)
    surv = [r["survival"] for r in rows]
    assert surv[0] == pytest.approx(0.8, abs=0.05) and surv[0] > surv[1] > surv[2]
    assert rows[0]["composed_dec_cos"] > rows[2]["composed_dec_cos"] > 0.2
    assert rows[1]["agree_direct_alive"] > 0.95
    # and the composition is what it says: true parents of layer 2 through two steps
    comp = compose(perms[0], perms[1])
    kids = np.flatnonzero(origins[2] >= 0)
    grand = origins[1][origins[2][kids]]
    ok = grand >= 0
    assert (comp[grand[ok]] == kids[ok]).mean() > 0.97
