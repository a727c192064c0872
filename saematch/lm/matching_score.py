"""Matching Score: how often a matched layer-(t+1) feature fires when its layer-t feature does.

PAPER.md calls it "the probability of paired feature activation" and leaves the formula open.
Chosen here, for a permutation ``perm`` (feature i of layer t matched to ``perm[i]`` of t+1) and
the SAE codes of both layers on the same held-out tokens:

    score_i = P(f_{t+1, perm[i]} > 0 | f_{t, i} > 0)   (over tokens)
    score   = mean of score_i over features i that fire at least once at layer t

A conditional probability rather than a correlation because SAE codes are sparse and
heavy-tailed: it asks the question the matching claims to answer ("is this the same feature one
layer later?") and is insensitive to magnitudes. It is asymmetric on purpose (direction t -> t+1,
like the permutation). The null is the same score under uniformly random permutations; for them
``score_i`` is about the firing rate of a random layer-(t+1) feature, i.e. ``L0 / n``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SAEMatchError
from ..sae import SAE


@dataclass
class MatchingScore:
    score: float  # mean over supported features
    null: float  # mean of the score over ``n_null`` random permutations
    n_supported: int  # features of layer t that fire at least once
    per_feature: np.ndarray  # [n] float64, NaN where feature i never fires at layer t


def _active_counts(sae_t: SAE, sae_t1: SAE, x_t: np.ndarray, x_t1: np.ndarray,
                   perms: list[np.ndarray], batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Firing counts of layer-t features, and co-firing counts with each perm's partner."""
    n = sae_t.n_features
    fired = np.zeros(n, dtype=np.int64)
    both = np.zeros((len(perms), n), dtype=np.int64)
    for s in range(0, len(x_t), batch):
        a = sae_t.encode(x_t[s:s + batch]) > 0
        b = sae_t1.encode(x_t1[s:s + batch]) > 0
        fired += a.sum(0)
        for k, p in enumerate(perms):
            both[k] += (a & b[:, p]).sum(0)
    return fired, both


def matching_score(sae_t: SAE, sae_t1: SAE, x_t: np.ndarray, x_t1: np.ndarray,
                   perm: np.ndarray, *, n_null: int = 8, seed: int = 0,
                   batch: int = 4096) -> MatchingScore:
    """Score of ``perm`` on paired activations ``x_t``, ``x_t1`` [N, d] of the same tokens."""
    if x_t.shape[0] != x_t1.shape[0]:
        raise SAEMatchError(f"x_t and x_t1 must hold the same tokens; got {len(x_t)} and "
                            f"{len(x_t1)} rows")
    n = sae_t.n_features
    if perm.shape != (n,) or sae_t1.n_features != n:
        raise SAEMatchError(f"perm shape {perm.shape} does not fit SAEs with {n} and "
                            f"{sae_t1.n_features} features")
    rng = np.random.default_rng(seed)
    perms = [perm] + [rng.permutation(n) for _ in range(n_null)]
    fired, both = _active_counts(sae_t, sae_t1, x_t, x_t1, perms, batch)
    ok = fired > 0
    if not ok.any():
        raise SAEMatchError("no layer-t feature fires on the tokens given; score undefined")
    cond = np.full((len(perms), n), np.nan)
    cond[:, ok] = both[:, ok] / fired[ok]
    return MatchingScore(score=float(cond[0, ok].mean()),
                         null=float(cond[1:, ok].mean()) if n_null else float("nan"),
                         n_supported=int(ok.sum()), per_feature=cond[0])
