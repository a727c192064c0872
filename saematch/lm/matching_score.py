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

Counts are kept per held-out sequence, so the score of a bootstrap resample of sequences
(:mod:`saematch.bootstrap`) is the same formula on weighted counts.
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
    replicates: np.ndarray | None = None  # [n_boot] score of each resample, if asked for
    null_replicates: np.ndarray | None = None  # [n_boot] null of each resample


def cofiring(sae_t: SAE, sae_t1: SAE, x_t: np.ndarray, x_t1: np.ndarray,
             perms: list[np.ndarray], seq: np.ndarray, n_seq: int,
             batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per sequence: firing counts of layer-t features [n_seq, n], and co-firing counts with
    each perm's partner [len(perms), n_seq, n]; ``seq`` [N] names each token's sequence."""
    n = sae_t.n_features
    fired = np.zeros((n_seq, n), dtype=np.int64)
    both = np.zeros((len(perms), n_seq, n), dtype=np.int64)
    for s in range(0, len(x_t), batch):
        a = sae_t.encode(x_t[s:s + batch]) > 0
        b = sae_t1.encode(x_t1[s:s + batch]) > 0
        # Per-sequence sums as one product with the token -> sequence indicator (exact: counts
        # stay far below 2^24); np.add.at over rows is 30x slower.
        onehot = np.zeros((n_seq, len(a)), dtype=np.float32)
        onehot[seq[s:s + batch], np.arange(len(a))] = 1.0
        fired += (onehot @ a.astype(np.float32)).astype(np.int64)
        for k, p in enumerate(perms):
            both[k] += (onehot @ (a & b[:, p]).astype(np.float32)).astype(np.int64)
    return fired, both


def score(fired: np.ndarray, both: np.ndarray, weights: np.ndarray | None = None):
    """Mean of ``both / fired`` over features that fire, from per-sequence counts
    (``fired`` and ``both`` [n_seq, n]); per resample when ``weights`` [B, n_seq] is given."""
    f = fired.sum(0)[None] if weights is None else weights @ fired
    b = both.sum(0)[None] if weights is None else weights @ both
    with np.errstate(invalid="ignore", divide="ignore"):
        cond = np.where(f > 0, b / f, np.nan)
    out = np.nanmean(cond, axis=1)
    return float(out[0]) if weights is None else out


def matching_scores(sae_t: SAE, sae_t1: SAE, x_t: np.ndarray, x_t1: np.ndarray,
                    perms: dict[str, np.ndarray], *, n_null: int = 8, seed: int = 0,
                    batch: int = 4096, seq: np.ndarray | None = None,
                    weights: np.ndarray | None = None) -> dict[str, MatchingScore]:
    """Score of each of ``perms`` on paired activations ``x_t``, ``x_t1`` [N, d] of the same
    tokens, all against one null of ``n_null`` random permutations.

    ``seq`` [N] (each token's sequence) and ``weights`` [B, n_seq] (bootstrap resamples of
    sequences) give replicates of each score and of the null as well, paired across perms.
    """
    if x_t.shape[0] != x_t1.shape[0]:
        raise SAEMatchError(f"x_t and x_t1 must hold the same tokens; got {len(x_t)} and "
                            f"{len(x_t1)} rows")
    n = sae_t.n_features
    bad = [k for k, p in perms.items() if p.shape != (n,)]
    if bad or sae_t1.n_features != n:
        raise SAEMatchError(f"perm {bad[:1]} does not fit SAEs with {n} and "
                            f"{sae_t1.n_features} features")
    seq = np.zeros(len(x_t), dtype=np.int64) if seq is None else np.asarray(seq)
    n_seq = int(seq.max()) + 1 if len(seq) else 1
    rng = np.random.default_rng(seed)
    null = [rng.permutation(n) for _ in range(n_null)]
    fired, both = cofiring(sae_t, sae_t1, x_t, x_t1, [*perms.values(), *null], seq, n_seq,
                           batch)
    total = fired.sum(0)
    ok = total > 0
    if not ok.any():
        raise SAEMatchError("no layer-t feature fires on the tokens given; score undefined")
    null_both = both[len(perms):]
    null_score = float(np.mean([score(fired, b) for b in null_both])) if n_null else np.nan
    null_reps = (np.mean([score(fired, b, weights) for b in null_both], axis=0)
                 if n_null and weights is not None else None)
    out = {}
    for k, name in enumerate(perms):
        per_feature = np.full(n, np.nan)
        per_feature[ok] = both[k].sum(0)[ok] / total[ok]
        out[name] = MatchingScore(
            score=score(fired, both[k]), null=null_score, n_supported=int(ok.sum()),
            per_feature=per_feature,
            replicates=None if weights is None else score(fired, both[k], weights),
            null_replicates=null_reps)
    return out


def matching_score(sae_t: SAE, sae_t1: SAE, x_t: np.ndarray, x_t1: np.ndarray,
                   perm: np.ndarray, **kw) -> MatchingScore:
    """:func:`matching_scores` of one permutation."""
    return matching_scores(sae_t, sae_t1, x_t, x_t1, {"perm": perm}, **kw)["perm"]
