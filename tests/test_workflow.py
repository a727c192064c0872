"""End-to-end workflow runs on planted families: results, determinism, incremental runs,
resuming after SIGKILL, and clean failures on bad input."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, dry_run_jobs, random_sae, reversed_keys, snakemake, tiny_model_folder
from conftest import assignment_perms as perms

from saematch.sae import SAE, save_sae
from saematch.synthetic import PlantedSpec, planted_family

pytestmark = pytest.mark.slow


def outputs(workdir: Path) -> dict[str, float]:
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns
            for p in (workdir / "results").rglob("*") if p.is_file()}


NEURONPEDIA_TEMPLATE = "test-model/{layer}-planted-{width}"


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """The test config, plus a tiny model folder for the logit lens (so the semantic table and
    token search run on planted SAEs) and a Neuronpedia template (so cards link out)."""
    import yaml

    config = yaml.safe_load((REPO / "tests/config/test.yaml").read_text())
    workdir = tmp_path_factory.mktemp("full")
    model = tiny_model_folder(workdir / "model", config["source"]["synthetic"]["d_model"])
    config["explore"] = {"model": str(model), "neuronpedia": {"template": NEURONPEDIA_TEMPLATE}}
    proc = snakemake(workdir, config=config)
    return workdir, config, proc


def test_full_run_recovers_planted_permutation(full_run):
    workdir, config, _ = full_run
    table = pd.read_csv(workdir / "results/metrics/summary.tsv", sep="\t")
    assert len(table) == 4 * 3  # variants x pairs
    folded = table[table.variant == "folded"]
    assert (folded.planted_recovered == 1.0).all()
    assert (folded.status == "optimal").all()
    ident = table[table.variant == "identity"]
    assert (ident.planted_recovered < 0.05).all()
    assert (folded.mse_mean.values < ident.mse_mean.values).all()
    persistence = pd.read_csv(workdir / "results/persistence/width_128/table.tsv", sep="\t")
    assert list(persistence.distance) == [1, 2]
    assert persistence.survival[0] > persistence.survival[1] > 0.3
    for name in ("matched_mse", "mse_distributions", "persistence", "thresholds"):
        png = workdir / f"results/figures/width_128/{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    with h5py.File(workdir / "results/costs/folded/width_128/0-1.h5") as h5:
        assert h5["cost"].shape == (128, 128)
        assert list(h5.attrs["terms"]) == ["decoder", "encoder", "b_enc"]
        assert h5.attrs["folded"] and h5.attrs["metric"] == "sqeuclidean"
    # no temporary files left behind
    assert not [p for p in (workdir / "results").rglob(".*tmp*")]


def test_full_run_explains_matches(full_run):
    """Evidence per layer, the semantic table (logit-lens agreement against random pairs) and
    one explorer per width. Planted partners share their decoder direction, so folded matches
    agree on logit-lens tokens far above the null; identity pairs do not."""
    workdir, config, _ = full_run
    from saematch.explore.evidence import read_evidence

    ev = read_evidence(workdir / "results/explore/evidence/width_128/layer_1.h5")
    assert ev.has_logit_lens and not ev.has_contexts  # no text for a synthetic source
    assert ev.neuronpedia_url(5) == "https://www.neuronpedia.org/test-model/1-planted-128/5"
    table = pd.read_csv(workdir / "results/explore/semantic/summary.tsv", sep="\t")
    assert set(table.score) == {"logit_tokens"} and len(table) == 4 * 3  # variants x pairs
    folded = table[table.variant == "folded"]
    ident = table[table.variant == "identity"]
    assert (folded["mean"] > 3 * folded.null_mean).all() and (folded.frac_above_null95 > 0.5).all()
    assert (ident.frac_above_null95 < 0.2).all()
    png = workdir / "results/figures/semantic_agreement.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = workdir / "results/explorer/width_128"
    html = (page / "index.html").read_text()
    assert '<script src="data/meta.js">' in html  # data by script tag: no fetch() from file://
    assert "fetch(" not in (page / "explorer.js").read_text()
    assert (page / "plotly.min.js").stat().st_size > 1_000_000
    snakemake(workdir, "--report", str(workdir / "report.html"), config=config)
    assert 'href=\\"results/explorer/width_128/index.html\\"' in \
        (workdir / "report.html").read_text()  # the report links the explorer


def test_explorer_in_headless_chromium(full_run):
    """As a person uses it, in a real headless Chromium from file://: no console error, the flow
    view draws, searching a feature opens its card with its true partners and Neuronpedia link,
    the token search finds it, and a partner link opens the partner's card."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from saematch.explore.browser import chromium, console_errors, open_explorer, search_feature
    from saematch.explore.evidence import read_evidence

    workdir, _, _ = full_run
    with h5py.File(workdir / "results/assign/folded/width_128/1-2.h5") as h5:
        perm_12 = h5["perm"][()]
    with h5py.File(workdir / "results/assign/folded/width_128/0-1.h5") as h5:
        prev_of_5 = int(np.flatnonzero(h5["perm"][()] == 5)[0])
    with h5py.File(workdir / "results/metrics/folded/width_128/1-2.h5") as h5:
        matched_5 = bool(h5["matched"][5])
    ev = read_evidence(workdir / "results/explore/evidence/width_128/layer_1.h5")
    token = ev.vocab[int(ev.logit_top[5, 0])]
    with chromium() as driver:
        open_explorer(driver, workdir / "results/explorer/width_128")
        count = "return document.querySelectorAll(arguments[0]).length"
        assert driver.execute_script(count, "#flow .sankey-node") >= 8
        assert driver.execute_script(count, "#flow .sankey-link") >= 6
        search_feature(driver, 1, 5)
        card = driver.find_element(By.ID, "card")
        nxt = card.find_element(By.CSS_SELECTOR, "a.partner-next")
        assert (nxt.get_attribute("data-layer"), nxt.get_attribute("data-index")) == \
            ("2", str(perm_12[5]))
        prev = card.find_element(By.CSS_SELECTOR, "a.partner-prev")
        assert prev.get_attribute("data-index") == str(prev_of_5)
        decision = card.find_element(By.CSS_SELECTOR, "tr.next td.ok, tr.next td.no").text
        assert decision == ("matched" if matched_5 else "not matched")
        link = card.find_element(By.CSS_SELECTOR, "a.neuronpedia").get_attribute("href")
        assert link == "https://www.neuronpedia.org/test-model/1-planted-128/5"
        assert "L1 #5" in driver.find_element(By.ID, "flow-title").text
        driver.save_screenshot(str(workdir / "explorer.png"))
        driver.find_element(By.ID, "token-input").send_keys(token)
        driver.find_element(By.ID, "token-go").click()
        hit = WebDriverWait(driver, 30).until(lambda d: d.find_elements(
            By.CSS_SELECTOR, '#token-results a[data-layer="1"][data-index="5"]'))
        hit[0].click()  # the search result opens the card (again)
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "card").get_attribute(
            "data-index") == "5")
        driver.find_element(By.CSS_SELECTOR, "#card a.partner-next").click()
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "card").get_attribute(
            "data-index") == str(perm_12[5]))
        assert console_errors(driver) == []
    shot = workdir / "explorer.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    print(f"explorer screenshot: {shot}")


def test_judge_rule_with_a_loopback_endpoint(full_run, tmp_path):
    """`explore.judge.enabled`: the judge rule asks a chat-completions server (here one on
    loopback) about explanation pairs along the longest chains; the key stays in the env."""
    from test_explore import ChatServer

    workdir, config, _ = full_run
    config = copy.deepcopy(config)
    target = "results/explore/judge/width_128/table.tsv"
    with ChatServer(lambda prompt: "SAME") as srv:
        config["explore"]["judge"] = {"enabled": True, "endpoint": srv.url, "model": "m",
                                      "paths": 5, "api_key_env": "JUDGE_TEST_KEY"}
        snakemake(workdir, target, config=config, env={"JUDGE_TEST_KEY": "sk-do-not-log"})
    table = pd.read_csv(workdir / target, sep="\t")
    assert list(table.layer_a) == [0, 1, 2] and table.same.sum() == len(srv.requests) > 0
    assert all(r["auth"] == "Bearer sk-do-not-log" for r in srv.requests)
    leaked = [p for p in workdir.rglob("*") if p.is_file() and p.suffix in {".tsv", ".log"}
              and b"sk-do-not-log" in p.read_bytes()]
    assert not leaked
    down = copy.deepcopy(config)
    down["explore"]["judge"].update(endpoint="http://127.0.0.1:9/v1", retries=1, backoff=0.01)
    proc = snakemake(workdir, target, "--forcerun", "judge", config=down, check=False)
    assert proc.returncode != 0 and "is down or unreachable: 2 tries failed" in proc.stderr


def test_warm_rerun_does_nothing(full_run):
    workdir, config, _ = full_run
    assert dry_run_jobs(workdir, config) == []


def test_same_inputs_give_identical_permutations(full_run, tmp_path):
    workdir, config, _ = full_run
    targets = [f"results/assign/folded/width_128/{a}-{a + 1}.h5" for a in range(3)]
    snakemake(tmp_path, *targets, config=config)
    first, second = perms(workdir), perms(tmp_path)
    assert second and all(np.array_equal(first[k], v) for k, v in second.items())


def test_certified_solver_gives_the_dense_answer(full_run, tmp_path):
    """`assign.solver: certified` stores candidate graphs, not dense matrices, and proves the
    same optimum: identical permutations (the planted costs have a unique optimum)."""
    workdir, config, _ = full_run
    config = copy.deepcopy(config)
    config["assign"] = {"solver": "certified", "k": 4}
    targets = [f"results/assign/{v}/width_128/{a}-{a + 1}.h5" for v in ("folded", "cosine")
               for a in range(3)]
    snakemake(tmp_path, *targets, config=config)
    assert not (tmp_path / "results/costs").exists()
    assert len(list((tmp_path / "results/candidates").rglob("*.h5"))) == 6
    dense, certified = perms(workdir), perms(tmp_path)
    assert all(np.array_equal(dense[k], v) for k, v in certified.items())
    for f in (tmp_path / "results/assign").rglob("*.h5"):
        with h5py.File(f) as h5:
            assert h5.attrs["solver"] == "certified" and h5.attrs["status"] == "optimal"
            assert h5.attrs["gap"] <= 1e-6 * abs(h5.attrs["objective"])


def test_candidate_job_takes_default_k(full_run, tmp_path):
    """`assign.k: null` (the configs' setting): the candidate job keeps
    `saematch.certified.default_k` per list for its pair on its machine (128 features: kept
    products, 16), and the stored graph says so."""
    from saematch.certified import default_k, read_candidates
    from saematch.features import Variant
    from saematch.results import PairKey
    from saematch.steps import candidates_step

    workdir, config, _ = full_run
    out = tmp_path / "graph.h5"
    folded = [workdir / f"results/folded/width_128/layer_{layer}.npz" for layer in (0, 1)]
    candidates_step(*folded, out, PairKey("128", "folded", 0, 1),
                    Variant.from_config("folded", config["variants"]["folded"]), None, 48, "cpu")
    assert read_candidates(out).k == default_k(128, 128, "cpu") == 16


@pytest.mark.parametrize("change, new_markers, new_explore_jobs", [
    (lambda c: c["widths"].update({"64": {"folder": "planted"}}), ("width_64",),
     {"feature_evidence": 4, "semantic_pair": 3, "explorer": 1}),
    (lambda c: c["layers"].append(4), ("3-4", "2-4", "layer_4"),  # 2-4: direct, distance 2
     {"feature_evidence": 1, "semantic_pair": 1, "explorer": 1}),
    (lambda c: c["variants"].update({"decoder_only": {"terms": ["decoder"]}}), ("decoder_only",),
     {"semantic_pair": 3, "explorer": 1}),
])
def test_config_growth_runs_only_new_jobs(full_run, change, new_markers, new_explore_jobs):
    """Evidence is keyed by width x layer and semantic scores by width x pair (every variant
    of a pair in one job, one file per variant), so a new width or layer adds exactly its own
    explore jobs, and a new variant reruns the width's semantic jobs (plus the aggregates)."""
    workdir, config, _ = full_run
    grown = copy.deepcopy(config)
    change(grown)
    jobs = dry_run_jobs(workdir, grown)
    aggregates = {"metrics_table", "persistence", "figures", "semantic_table", "explorer", "all"}
    new = [(r, o) for r, o in jobs if r not in aggregates]
    assert new, "growing the config must add jobs"
    assert all(any(m in o for m in new_markers) for _, o in new), new
    explore_rules = ("feature_evidence", "semantic_pair", "explorer")
    counts = {r: n for r in explore_rules if (n := sum(rule == r for rule, _ in jobs))}
    assert counts == new_explore_jobs, counts  # one explorer: the grown width's
    if new_markers == ("width_64",):  # old width's aggregates stay untouched
        assert not [o for r, o in jobs if r in aggregates and "width_128" in o]


def test_adding_a_wider_width_and_its_pair_runs_only_its_jobs(full_run):
    """A complete 128-only run, then width 256 (planted by splitting 128) and the pair
    [128, 256]: only 256's own jobs, the cross-width jobs and the aggregates are planned; no job
    of width 128 reruns."""
    workdir, config, _ = full_run
    grown = copy.deepcopy(config)
    grown["widths"]["256"] = {"folder": "planted"}
    grown["source"]["synthetic"]["split_from"] = {"256": "128"}
    grown["cross_width"] = [["128", "256"]]
    jobs = dry_run_jobs(workdir, grown)
    aggregates = {"metrics_table", "cross_table", "semantic_table", "all"}
    assert all("width_256" in out or "128-256" in out for rule, out in jobs
               if rule not in aggregates), jobs
    assert not [out for _, out in jobs if "width_128" in out]
    planned = [rule for rule, _ in jobs]
    assert planned.count("cross_links") == planned.count("cross_assign") == 4 + 3
    assert planned.count("plant_sae") == 4 and "cross_figure" in planned


def test_reordered_config_keys_rerun_nothing(full_run):
    """Params are compared by their text: a config written back with its keys in another order
    (as YAML tools do) must plan no job; with a width added, only that width's jobs."""
    workdir, config, _ = full_run
    assert dry_run_jobs(workdir, reversed_keys(config), sort_keys=False) == []
    grown = reversed_keys(config)
    grown["widths"] = {"64": {"folder": "planted"}, **grown["widths"]}
    jobs = dry_run_jobs(workdir, grown, sort_keys=False)
    assert jobs and all("width_64" in out or rule in {"metrics_table", "semantic_table", "all"}
                        for rule, out in jobs), jobs


SHIPPED_CONFIGS = ["config.yaml", *sorted(p.relative_to(REPO).as_posix()
                                         for p in (REPO / "config").glob("*.yaml"))]


@pytest.mark.parametrize("configfile", SHIPPED_CONFIGS)
def test_params_do_not_depend_on_config_key_order(tmp_path, configfile):
    """Every shipped config plans, and every job's params, as Snakemake records and compares
    them, are the same when the config's keys come in reverse order. No run is needed, so the
    default (trained, two widths) config is checked too, which a finished run could not afford."""
    config = yaml.safe_load((REPO / configfile).read_text())

    def plan(cfg, name):  # both plans run side by side, one process each
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return subprocess.Popen([sys.executable, str(REPO / "tests/planned_params.py"), str(path),
                                 str(tmp_path / name.replace(".yaml", ""))],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    procs = [plan(config, "given.yaml"), plan(reversed_keys(config), "reversed.yaml")]
    outs = [proc.communicate() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in outs]
    given, reordered = (json.loads(out) for out, _ in outs)
    assert given and given == reordered


def test_shuffled_inputs_cannot_mis_assign(full_run, tmp_path):
    """Aggregating steps find each per-pair file by what it records, not by its position: a
    shuffled input list gives the same tables, and a missing or doubled file is an error."""
    import random

    from saematch.errors import SAEMatchError
    from saematch.steps import persistence_step, summary_step

    workdir, config, _ = full_run
    res = workdir / "results"
    folded = {layer: res / f"folded/width_128/layer_{layer}.npz" for layer in range(4)}
    consecutive = [res / f"assign/folded/width_128/{a}-{a + 1}.h5" for a in range(3)]
    metrics = [res / f"metrics/folded/width_128/{a}-{a + 1}.h5" for a in range(3)]
    direct = [res / f"assign/folded/width_128/{a}-{a + 2}.h5" for a in range(2)]
    for f in (consecutive, metrics, direct):
        random.Random(0).shuffle(f)
    persistence_step(folded, consecutive, metrics, direct, "128", "folded", 2,
                     tmp_path / "table.tsv", tmp_path / "chains.h5")
    assert (tmp_path / "table.tsv").read_text() == \
        (res / "persistence/width_128/table.tsv").read_text()
    every = sorted((res / "metrics").rglob("*.h5"))
    random.Random(1).shuffle(every)
    summary_step(every, tmp_path / "summary.tsv")
    got = pd.read_csv(tmp_path / "summary.tsv", sep="\t")
    want = pd.read_csv(res / "metrics/summary.tsv", sep="\t")
    keys = ["variant", "layer_a", "layer_b"]
    pd.testing.assert_frame_equal(got.sort_values(keys).reset_index(drop=True),
                                  want.sort_values(keys).reset_index(drop=True))
    with pytest.raises(SAEMatchError, match="no input file holds"):
        persistence_step(folded, consecutive[1:], metrics, direct, "128", "folded", 2,
                         tmp_path / "t2.tsv", tmp_path / "c2.h5")
    with pytest.raises(SAEMatchError, match="both hold"):
        persistence_step(folded, consecutive + consecutive[:1], metrics, direct, "128",
                         "folded", 2, tmp_path / "t3.tsv", tmp_path / "c3.h5")
    assert not (tmp_path / "t2.tsv").exists() and not (tmp_path / "t3.tsv").exists()


def test_killed_run_resumes_to_the_same_results(full_run, tmp_path):
    ref_dir, config, _ = full_run
    import yaml

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml"),
           "--cores", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "results").rglob("*.h5"))) < 8:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = outputs(tmp_path)
    assert before and "results/metrics/summary.tsv" not in before
    snakemake(tmp_path, "--unlock", config=config)  # SIGKILL leaves Snakemake's lock behind
    snakemake(tmp_path, config=config)
    after = outputs(tmp_path)
    redone = [k for k, t in before.items() if after[k] != t]
    assert len(redone) <= 2, f"finished jobs were redone: {redone}"  # at most the one in flight
    ref, got = perms(ref_dir), perms(tmp_path)
    assert ref.keys() == got.keys() and all(np.array_equal(ref[k], got[k]) for k in ref)
    assert (tmp_path / "results/metrics/summary.tsv").read_text() == \
        (ref_dir / "results/metrics/summary.tsv").read_text()


def local_config(root: Path, layers=(0, 1, 2)) -> dict:
    return {"source": {"kind": "local", "local": {"root": str(root)}}, "layers": list(layers),
            "widths": {"64": {"folder": "planted"}},
            "variants": {"folded": {}, "identity": {"method": "identity"}},
            "persistence": {"max_distance": 1}}


def corrupt(path: Path, **changes) -> None:
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays.update({k: v(arrays[k]) for k, v in changes.items()})
    np.savez(path, **arrays)


@pytest.mark.parametrize("break_it, message", [
    (lambda p: corrupt(p, W_dec=lambda a: np.where(a > 0.3, np.nan, a)),
     "W_dec has {} non-finite"),
    (lambda p: corrupt(p, threshold=lambda a: np.where(np.arange(len(a)) == 5, -1.0, a)),
     "threshold must be > 0"),
    (lambda p: p.write_bytes(p.read_bytes()[:3000]), "cannot read"),
    (lambda p: p.unlink(), "Missing input files"),
])
def test_bad_input_fails_clearly_with_no_output(tmp_path, break_it, message):
    spec = PlantedSpec(n_features=64, d_model=16)
    files = planted_family(spec, [0, 1, 2], tmp_path / "saes", "64")
    break_it(files[1])
    proc = snakemake(tmp_path, config=local_config(tmp_path / "saes"), check=False)
    assert proc.returncode != 0
    err = proc.stderr
    assert str(files[1]) in err or "layer_1/width_64/planted/params.npz" in err, err[-3000:]
    assert message.split("{}")[0] in err, err[-3000:]
    assert not (tmp_path / "results/folded/width_64/layer_1.npz").exists()
    assert not (tmp_path / "results/metrics/summary.tsv").exists()


def test_d_model_mismatch_fails_clearly(tmp_path):
    files = planted_family(PlantedSpec(n_features=64, d_model=16), [0, 1], tmp_path / "s", "64")
    save_sae(files[1], random_sae(n=64, d=12))
    proc = snakemake(tmp_path, config=local_config(tmp_path / "s", (0, 1)), check=False)
    assert proc.returncode != 0
    assert "d_model mismatch" in proc.stderr and "layer_1" in proc.stderr
    assert not list((tmp_path / "results").rglob("assign/**/*.h5"))


def test_unknown_config_key_is_refused(tmp_path, test_config):
    test_config["compute"]["blok"] = 10
    proc = snakemake(tmp_path, "-n", config=test_config, check=False)
    assert proc.returncode != 0 and "blok" in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists()


def test_hub_source_reads_a_prefilled_cache_offline(tmp_path):
    """The Hub path runs for real against a pre-filled cache, as on a cluster without internet."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    snap = tmp_path / "hub/models--google--gemma-scope-test/snapshots" / sha
    planted_family(PlantedSpec(n_features=64, d_model=16), [0, 1], snap, "64", "average_l0_9")
    refs = tmp_path / "hub/models--google--gemma-scope-test/refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(sha)
    config = {"source": {"kind": "hub", "hub": {"repo_id": "google/gemma-scope-test",
                                                 "revision": sha}},
              "layers": [0, 1], "widths": {"64": {"folder": {"0": "average_l0_9",
                                                                "1": "average_l0_9"}}},
              "variants": {"folded": {}}, "persistence": {"max_distance": 1}}
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "HF_TOKEN": "hf_secret_do_not_log"}
    snakemake(tmp_path, "results/assign/folded/width_64/0-1.h5", config=config, env=env)
    manifest = json.loads((tmp_path / "results/fetched/width_64/layer_1.json").read_text())
    assert manifest["path"].startswith(str(snap.resolve()))
    assert manifest["filename"] == "layer_1/width_64/average_l0_9/params.npz"
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in {".json", ".log", ".h5"}
              and b"hf_secret_do_not_log" in p.read_bytes()]
    assert not leaked


def test_saelens_source_reads_a_prefilled_cache_offline(tmp_path):
    """A SAELens release (Gemma Scope's format), resolved through a registry file and read from
    a pre-filled cache offline; every SAE carries its Neuronpedia id into the folded output."""
    import yaml

    from saematch.sources import neuronpedia_id

    sha = "fedcba9876543210fedcba9876543210fedcba98"
    repo = tmp_path / "hub/models--google--gemma-scope-test-res"
    planted_family(PlantedSpec(n_features=64, d_model=16), [0, 1], repo / "snapshots" / sha, "64",
                   "average_l0_9")
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text(sha)
    (tmp_path / "registry.yaml").write_text(yaml.safe_dump({"gemma-scope-test": {
        "conversion_func": "gemma_2", "model": "test-model",
        "repo_id": "google/gemma-scope-test-res",
        "saes": [{"id": f"layer_{L}/width_64/canonical", "neuronpedia": f"test-model/{L}-res-64",
                  "path": f"layer_{L}/width_64/average_l0_9"} for L in (0, 1)]}}))
    config = {"source": {"kind": "saelens", "saelens": {
                  "release": "gemma-scope-test", "sae_id": "layer_{layer}/width_{width}/canonical",
                  "registry": str(tmp_path / "registry.yaml")}},
              "layers": [0, 1], "widths": {"64": {}}, "variants": {"folded": {}},
              "persistence": {"max_distance": 1}}
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "HF_TOKEN": "hf_secret_do_not_log"}
    snakemake(tmp_path, "results/assign/folded/width_64/0-1.h5", config=config, env=env)
    manifest = tmp_path / "results/saelens/width_64/layer_1.json"
    record = json.loads(manifest.read_text())
    assert record["filename"] == "layer_1/width_64/average_l0_9/params.npz"
    assert record["revision"] == "main" and record["commit"] == sha  # the schema's default
    assert record["meta"]["hook_name"] == "blocks.1.hook_resid_post"
    for layer in (0, 1):
        folded = tmp_path / f"results/folded/width_64/layer_{layer}.npz"
        assert neuronpedia_id(folded) == f"test-model/{layer}-res-64"
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in {".json", ".log", ".h5"}
              and b"hf_secret_do_not_log" in p.read_bytes()]
    assert not leaked


def test_every_reported_file_has_a_caption():
    """Each report(...) output in the rules names a caption under report/ that exists (the
    report of a run only renders the rules that config reaches)."""
    import re

    calls = [(smk.name, call) for smk in sorted((REPO / "rules").glob("*.smk"))
             for call in re.findall(r"\breport\((.*?)\)", smk.read_text(), flags=re.S)]
    assert len(calls) >= 19
    for name, call in calls:
        caption = re.search(r'caption="\.\./(report/[\w.]+\.rst)"', call)
        assert caption, f"{name}: report({call}) has no caption"
        assert (REPO / caption[1]).read_text().strip(), f"{name}: {caption[1]} is empty"


def test_lint_is_clean():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--snakefile",
                           str(REPO / "Snakefile")], capture_output=True, text=True, cwd=REPO)
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr


def test_step_functions_are_importable_like_the_scripts(tmp_path):
    """PyPSA-Eur style: a rule's step is a plain function a test can call."""
    from saematch.steps import fold_step

    save_sae(tmp_path / "p.npz", random_sae())
    fold_step(tmp_path / "p.npz", tmp_path / "f.npz")
    with np.load(tmp_path / "f.npz", allow_pickle=False) as f:
        np.testing.assert_array_equal(f["threshold"], 1.0)
        assert SAE.__name__ and f["scale"].shape == (64,)


def test_cluster_resources_grow_with_width(tmp_path):
    """The Gemma Scope config plans 65k jobs with more memory and time than 16k ones."""
    proc = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config/gemma-scope-2b.yaml"))
    mem: dict[str, set[int]] = {}
    rule = width = None
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("rule "):
            rule = line.split()[1].rstrip(":")
        elif line.startswith("wildcards:"):
            width = dict(kv.split("=") for kv in line[10:].replace(" ", "").split(",")).get("width")
        elif line.startswith("resources:") and rule in ("cost_matrix", "assign"):
            mem.setdefault(width, set()).add(int(line.split("mem_mb=")[1].split(",")[0]))
    assert min(mem["65k"]) > max(mem["16k"]) > 2048


def test_jobs_run_numba_on_their_threads(tmp_path):
    """Snakemake hands a job's threads to torch and BLAS (OMP_NUM_THREADS); ``run`` gives them to
    numba too, and restores numba's count after the step. In a fresh process (numba not imported
    yet, as in a job) it goes through NUMBA_NUM_THREADS."""
    from types import SimpleNamespace

    import numba

    from saematch.workflow import run

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one core: nothing to pin")
    before = numba.get_num_threads()
    seen = []
    job = SimpleNamespace(log=[str(tmp_path / "job.log")], rule="assign", threads=1)
    run(job, lambda s: seen.append(numba.get_num_threads()))
    assert seen == [1] and numba.get_num_threads() == before
    assert "1 thread(s)" in (tmp_path / "job.log").read_text()
    code = ("from types import SimpleNamespace\nfrom saematch.workflow import run\n"
            "def step(s):\n    import numba\n    print(numba.get_num_threads())\n"
            f"run(SimpleNamespace(log=[{str(tmp_path / 'fresh.log')!r}], threads=1), step)\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout
    assert out.strip() == "1"
