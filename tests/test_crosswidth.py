"""Cross-width matching: planted splits recovered, a calibrated parent null, and the workflow
(rectangular LAP, parent maps, links files, table, figure; top-1 variants) on planted families."""
from __future__ import annotations

import copy

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, random_sae, snakemake

from saematch.assign import assign_dense, read_assignment, top1
from saematch.costs import cost_matrix, nearest
from saematch.crosswidth import children_lists, cross_links, split_along_depth, top1_null
from saematch.features import Variant, feature_vectors, variant_vectors
from saematch.metrics import null_threshold, per_feature_mse
from saematch.synthetic import PlantedSpec, SplitSpec, planted_layer, split_layer

SHARES = ("parents_0", "parents_1", "parents_2", "parents_3plus")


def test_split_planting_follows_the_lineage_along_layers():
    """Children keep their parent's lineage from layer to layer, parentless features stay
    parentless, every parent has at most max_children, and the narrow family is untouched."""
    narrow = PlantedSpec(n_features=200, d_model=24, seed=3)
    spec = SplitSpec(narrow=narrow, n_features=600)
    before = None
    for layer in range(4):
        wide, parent, origin = split_layer(spec, layer)
        _, narrow_origin = planted_layer(narrow, layer)
        assert wide.n_features == 600 and wide.d_model == 24
        counts = np.bincount(parent[parent >= 0], minlength=200)
        assert counts.max() <= 4 and 0.05 < (counts == 0).mean() < 0.2
        assert 0.05 < (parent < 0).mean() < 0.3
        if before is None:
            assert (origin == -1).all()
        else:
            old_parent = before
            kept = np.flatnonzero(origin >= 0)
            assert 0.5 < len(kept) / 600 < 0.95
            child = kept[parent[kept] >= 0]
            np.testing.assert_array_equal(narrow_origin[parent[child]], old_parent[origin[child]])
            assert (old_parent[origin[kept[parent[kept] < 0]]] < 0).all()
        before = parent
    again = split_layer(spec, 3)
    np.testing.assert_array_equal(again[0].W_dec, wide.W_dec)
    np.testing.assert_array_equal(again[1], parent)


def planted_pair(n=256, m=1024, d=48, layer_a=2, layer_b=2, seed=7):
    """Narrow SAE at layer_a, its split wide SAE at layer_b, and the true parent of each wide
    feature at layer_a (-1: none)."""
    narrow = PlantedSpec(n_features=n, d_model=d, seed=seed)
    a, _ = planted_layer(narrow, layer_a)
    wide, parent, _ = split_layer(SplitSpec(narrow=narrow, n_features=m), layer_b)
    if layer_a != layer_b:
        _, origin = planted_layer(narrow, layer_b)
        parent = np.where(parent >= 0, origin[np.maximum(parent, 0)], -1)
    return a, wide, parent


def links_of(a, wide, parent, variant=None, alpha=0.01):
    variant = variant or Variant("folded")
    A, W = variant_vectors(a, wide, variant, rectangular=True)
    lap = assign_dense(cost_matrix(A, W))
    parents = top1(*nearest(W, A), n_b=len(A))
    return cross_links(a, wide, lap, parents, variant, alpha=alpha, true_parent=parent)


@pytest.mark.parametrize("variant", [Variant("folded"),
                                     Variant("cosine", terms=("decoder",), folded=False,
                                             metric="cosine")])
def test_parent_map_recovers_planted_splits(variant):
    a, wide, parent = planted_pair()
    arrays, s = links_of(a, wide, parent, variant)
    assert s["planted_links_recovered"] >= 0.95
    assert s["planted_false_links"] <= 0.06  # ~140 parentless features; the rate: next tests
    for share in SHARES:  # the split-factor histogram matches the truth
        assert abs(s[share] - s[f"planted_{share}"]) <= 0.03, share
    assert s["split_factor"] == pytest.approx(s["planted_split_factor"], rel=0.05)
    assert s["wide_no_parent"] == pytest.approx(s["planted_wide_no_parent"], abs=0.03)
    # the exact 1:1 assignment sends a narrow feature that has children to one of them
    has_kids = np.bincount(parent[parent >= 0], minlength=a.n_features) > 0
    assert arrays["lap_to_child"][has_kids].mean() > 0.95
    assert len(set(arrays["lap_partner"])) == a.n_features
    # children lists: CSR over the links that count, closest first
    ptr, kids = arrays["children_indptr"], arrays["children"]
    np.testing.assert_array_equal(np.diff(ptr), arrays["n_children"])
    assert sorted(kids) == list(np.flatnonzero(arrays["has_parent"]))
    for i in range(a.n_features):
        mine = kids[ptr[i]:ptr[i + 1]]
        assert (arrays["parent"][mine] == i).all()
        assert (np.diff(arrays["parent_mse"][mine]) >= 0).all()


def test_parent_map_across_layers_finds_the_lineage():
    """Narrow at t -> wide at t+1: a child's parent at t+1 descends from a narrow feature at t;
    drift adds to the split, so fewer links count, but those that do are right."""
    a, wide, parent = planted_pair(layer_a=2, layer_b=3)
    arrays, s = links_of(a, wide, parent)
    assert s["planted_links_recovered"] > 0.6
    counted = arrays["has_parent"]
    assert (arrays["parent"][counted] == parent[counted]).mean() > 0.97


def test_parent_null_has_the_stated_false_positive_rate():
    """Two unrelated SAEs: the top-1 null gives about alpha of the wide features a parent; the
    random-pairing null of layer pairs would give most of them one (a nearest neighbour out of
    hundreds always looks close)."""
    a, w = random_sae(n=400, d=16, seed=1), random_sae(n=1600, d=16, seed=11)
    variant = Variant("folded")
    A, W = variant_vectors(a, w, variant, rectangular=True)
    mse = per_feature_mse(W, A, nearest(W, A)[0])
    tau, null = top1_null(w, a, variant, alpha=0.05, seed=0)
    assert len(null) == 1600 and (mse < tau).mean() == pytest.approx(0.05, abs=0.02)
    random_pairing, _ = null_threshold(A, W, alpha=0.05, samples=5, seed=0)
    assert (mse < random_pairing).mean() > 0.3
    np.testing.assert_allclose(feature_vectors(w), W)  # folded variant space = metric space


def links_arrays(parent: list[int], n_narrow: int) -> dict[str, np.ndarray]:
    parent = np.array(parent)
    ptr, kids = children_lists(parent, parent >= 0, np.zeros(len(parent)), n_narrow)
    return {"n_children": np.diff(ptr), "children_indptr": ptr, "children": kids}


def test_split_along_depth_by_hand():
    """Narrow 0 splits into wide 0, 1 at t and its partner (narrow 1) into wide 3, 4 at t+1,
    where the wide SAE matched 0 -> 3 and 1 -> 4: split kept, children followed. Narrow 1's
    child (wide 2) goes to wide 1, which is not a child of narrow 1's partner (narrow 2)."""
    at_t = links_arrays([0, 0, 1, -1, -1], 3)
    at_next = links_arrays([2, 0, 0, 1, 1], 3)
    row = split_along_depth(at_t, at_next, narrow_perm=np.array([1, 2, 0]),
                            narrow_matched=np.array([True, True, False]),
                            wide_perm=np.array([3, 4, 1, 0, 2]))
    assert row["persisting"] == 2 and row["split_t"] == 0.5
    assert row["split_kept"] == 1.0 and row["split_base"] == 0.5
    assert row["children_followed"] == pytest.approx(2 / 3)
    assert row["children_corr"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------- workflow
@pytest.fixture(scope="module")
def cross_run(tmp_path_factory):
    config = yaml.safe_load((REPO / "tests/config/crosswidth.yaml").read_text())
    workdir = tmp_path_factory.mktemp("cross")
    snakemake(workdir, config=config)
    return workdir, config


@pytest.mark.slow
def test_workflow_recovers_planted_splits(cross_run):
    workdir, config = cross_run
    table = pd.read_csv(workdir / "results/crosswidth/summary.tsv", sep="\t")
    assert len(table) == 3 + 2  # each layer with itself, each with the next
    assert set(table.narrow.astype(str)) == {"128"} and set(table.wide.astype(str)) == {"256"}
    same = table[table.layer_a == table.layer_b]
    assert (same.planted_links_recovered >= 0.95).all()
    for share in SHARES:
        assert (same[share] - same[f"planted_{share}"]).abs().max() <= 0.03, share
    assert (same.lap_solver == "dense").all() and (same.lap_status == "optimal").all()
    across = table[table.layer_a != table.layer_b]
    assert list(across.layer_b - across.layer_a) == [1, 1]
    png = workdir / "results/figures/crosswidth/128-256.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    # planted children move with their parent: the same features split, the same way
    depth = pd.read_csv(workdir / "results/crosswidth/depth/128-256.tsv", sep="\t")
    assert list(depth.layer_a) == [0, 1] and (depth.children_followed > 0.9).all()
    assert (depth.split_kept > depth.split_base + 0.2).all()


@pytest.mark.slow
def test_workflow_map_files_record_their_kind(cross_run):
    workdir, _ = cross_run
    res = workdir / "results"
    lap = read_assignment(res / "crosswidth/assign/folded/128-256/1-2.h5")
    assert (lap.kind, lap.n_b, len(lap.perm)) == ("injective", 256, 128)
    parents = read_assignment(res / "crosswidth/parents/folded/128-256/1-2.h5")
    assert (parents.kind, parents.n_b, len(parents.perm)) == ("many_to_one", 128, 256)
    top = read_assignment(res / "assign/top1_cosine/width_256/0-1.h5")
    assert top.kind == "many_to_one" and top.solver == "top1" and len(set(top.perm)) < 256
    assert read_assignment(res / "assign/folded/width_256/0-1.h5").kind == "permutation"
    with h5py.File(res / "crosswidth/links/folded/128-256/1-1.h5") as h5:
        assert (h5.attrs["narrow"], h5.attrs["wide"], h5.attrs["layer_a"]) == ("128", "256", 1)
        np.testing.assert_array_equal(h5["parent"][()], read_assignment(
            res / "crosswidth/parents/folded/128-256/1-1.h5").perm)
        assert h5["children_indptr"][-1] == h5["has_parent"][()].sum() == len(h5["children"])
    summary = pd.read_csv(res / "metrics/summary.tsv", sep="\t")
    assert set(summary.variant) == {"folded", "top1_cosine"}


@pytest.mark.slow
@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(cross_width=[["128", "512"]]), "width 512 is not in widths"),
    (lambda c: c.update(cross_width=[["256", "128"]]), "must name the narrower width first"),
    (lambda c: c["persistence"].update(variant="top1_cosine"), "must be a configured lap"),
])
def test_bad_cross_width_config_fails_clearly(tmp_path, change, message):
    config = yaml.safe_load((REPO / "tests/config/crosswidth.yaml").read_text())
    change(config)
    proc = snakemake(tmp_path, "-n", config=config, check=False)
    assert proc.returncode != 0 and message in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists()


def rectangular_certified() -> bool:
    """Whether saematch.certified accepts A with fewer rows than B (another branch adds it)."""
    from saematch.certified import certified_assign
    from saematch.errors import SAEMatchError

    try:
        certified_assign(np.eye(2, 3, dtype=np.float32), np.eye(3, dtype=np.float32), k=2)
    except SAEMatchError:
        return False
    return True


@pytest.mark.slow
def test_certified_cross_width_assignment_is_the_dense_one(cross_run, tmp_path):
    if not rectangular_certified():
        pytest.skip("saematch.certified does not take n_a < n_b yet")
    workdir, config = cross_run
    config = copy.deepcopy(config)
    config["assign"] = {"solver": "certified", "k": 4}
    targets = [f"results/crosswidth/assign/folded/128-256/{a}-{b}.h5"
               for a, b in ((0, 0), (1, 1), (0, 1))]
    snakemake(tmp_path, *targets, config=config)
    assert len(list((tmp_path / "results/crosswidth/candidates").rglob("*.h5"))) == 3
    for target in targets:
        dense, certified = read_assignment(workdir / target), read_assignment(tmp_path / target)
        assert certified.solver == "certified" and certified.status == "optimal"
        assert certified.kind == "injective"
        np.testing.assert_array_equal(certified.perm, dense.perm)
