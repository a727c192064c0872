"""The workflow submitted to a real one-node Slurm cluster (.ci/slurm.sh), on loopback.

Skipped only where Slurm cannot be installed (not root, not Debian, no apt).
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, assignment_perms, snakemake
from slurm_util import live_cluster, slurm_available

from saematch.synthetic import PlantedSpec, planted_family

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def submit(workdir: Path, config: dict) -> subprocess.CompletedProcess:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(workdir), "--workflow-profile", str(REPO / "profiles/slurm-test"),
         "--retries", "0", "--jobs", "4", "--keep-going",
         "--configfile", str(workdir / "config.yaml")],
        capture_output=True, text=True, timeout=900)


def test_workflow_runs_as_slurm_jobs_and_resumes(tmp_path):
    ok, reason = slurm_available()
    if not ok:
        pytest.skip(reason)
    files = planted_family(PlantedSpec(n_features=64, d_model=16, seed=3), [0, 1, 2],
                           tmp_path / "saes", "64")
    config = {"source": {"kind": "local", "local": {"root": str(tmp_path / "saes")}},
              "layers": [0, 1, 2], "widths": {"64": {"folder": "planted"}},
              "variants": {"folded": {}, "identity": {"method": "identity"}},
              "persistence": {"max_distance": 2}}
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    local.mkdir()
    cluster.mkdir()
    snakemake(local, config=config)

    # First submission: layer 2's file is broken, so its jobs fail and the rest finish
    # (--keep-going: without it, which jobs started before the first failure is up to timing).
    good = files[2].read_bytes()
    files[2].write_bytes(good[:2000])
    with live_cluster():
        first = submit(cluster, config)
        assert first.returncode != 0
        fold_log = (cluster / "logs/fold/width_64/layer_2.log").read_text()
        assert "layer_2/width_64/planted/params.npz: cannot read" in fold_log
        done = {p: p.stat().st_mtime_ns for p in (cluster / "results").rglob("*") if p.is_file()}
        assert cluster / "results/folded/width_64/layer_0.npz" in done
        assert not (cluster / "results/folded/width_64/layer_2.npz").exists()

        files[2].write_bytes(good)  # repaired: the second submission resumes
        second = submit(cluster, config)
        assert second.returncode == 0, second.stderr[-4000:]

    redone = [p for p, t in done.items() if p.stat().st_mtime_ns != t]
    assert not redone, f"finished jobs were redone: {redone}"
    # every job ran inside Slurm (its log names the Slurm job id), except the local rules
    logs = list((cluster / "logs").rglob("*.log"))
    assert len(logs) >= 10
    for log in logs:
        local_rule = log.parent.name == "figures"
        assert bool(re.search(r"SLURM_JOB_ID=\d+", log.read_text())) != local_rule, log
    # the profile's set-threads reaches the job (and its numba): 2 for assign, 1 elsewhere
    assert "2 thread(s)" in (cluster / "logs/assign/folded/width_64/0-1.log").read_text()
    assert "1 thread(s)" in (cluster / "logs/fold/width_64/layer_0.log").read_text()
    # identical results to the local run
    ref, got = assignment_perms(local), assignment_perms(cluster)
    assert ref.keys() == got.keys() and all(np.array_equal(ref[k], got[k]) for k in ref)
    assert (cluster / "results/metrics/summary.tsv").read_text() == \
        (local / "results/metrics/summary.tsv").read_text()
