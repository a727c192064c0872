"""Shared fixtures: random SAEs, planted families, and a Snakemake runner on temp folders."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from saematch.sae import SAE

REPO = Path(__file__).resolve().parent.parent


def random_sae(n: int = 64, d: int = 16, seed: int = 0) -> SAE:
    """A JumpReLU SAE with spread-out positive thresholds (float32)."""
    rng = np.random.default_rng(seed)
    dec = rng.standard_normal((n, d))
    dec /= np.linalg.norm(dec, axis=1, keepdims=True)
    return SAE(
        W_enc=rng.standard_normal((d, n)).astype(np.float32),
        b_enc=rng.normal(-0.5, 0.5, n).astype(np.float32),
        W_dec=dec.astype(np.float32),
        b_dec=rng.standard_normal(d).astype(np.float32) * 0.1,
        threshold=rng.lognormal(0, 0.7, n).astype(np.float32),
        source=f"random(seed={seed})",
    )


def snakemake(workdir: Path, *args: str, config: dict | None = None,
              env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run this repo's workflow in ``workdir`` (results/ lands there), optionally with a config."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--cores", "2", "--nocolor", *args]
    if config is not None:  # last: --configfile takes every word after it
        path = workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        cmd += ["--configfile", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc


def reversed_keys(obj):
    """The same config with every mapping's keys in reverse order (as another YAML tool might
    write it back)."""
    if isinstance(obj, dict):
        return {k: reversed_keys(obj[k]) for k in reversed(list(obj))}
    return obj


def dry_run_jobs(workdir: Path, config: dict, *, sort_keys: bool = True) -> list[tuple[str, str]]:
    """(rule, outputs) of every job a dry run would execute; ``sort_keys=False`` writes the
    config's keys in the order given."""
    path = workdir / "dry-run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=sort_keys))
    out = snakemake(workdir, "-n", "--configfile", str(path)).stdout
    jobs, rule = [], None
    for line in out.splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
            jobs.append((rule, ""))
        elif line.strip().startswith("output:") and rule:
            jobs[-1] = (rule, line.split(":", 1)[1].strip())
    return jobs


def assignment_perms(workdir: Path) -> dict[str, np.ndarray]:
    """Every ``perm`` under ``workdir/results/assign``, keyed by relative path."""
    import h5py

    out = {}
    for f in sorted((workdir / "results/assign").rglob("*.h5")):
        with h5py.File(f) as h5:
            out[str(f.relative_to(workdir))] = h5["perm"][()]
    return out


@pytest.fixture
def test_config() -> dict:
    return yaml.safe_load((REPO / "tests/config/test.yaml").read_text())


def tiny_model_folder(folder: Path, d_model: int, vocab: int = 300, seed: int = 0,
                      model_type: str = "gemma3_text") -> Path:
    """An HF-style model folder with just what the logit lens reads: config.json, an input
    embedding (tied unembedding) and final norm as safetensors, and a word-level tokenizer.json
    whose token i is the text ``w{i}``."""
    import json

    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    save_file({"model.embed_tokens.weight": torch.randn(vocab, d_model, generator=g),
               "model.norm.weight": 0.1 * torch.randn(d_model, generator=g)},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": model_type,
                                                    "hidden_size": d_model,
                                                    "vocab_size": vocab}))
    Tokenizer(WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0")).save(
        str(folder / "tokenizer.json"))
    return folder
