"""Bootstrap over held-out sequences: one set of resamples serves every statistic of a job.

Tokens within a sequence are correlated, so the unit of resampling is the sequence. Every
statistic here (explained variance, mean change of loss, Matching Score) is a ratio of sums
over sequences, so a resample is a vector of multiplicities ``w`` [n_seq] (multinomial counts)
and its value is the same ratio of ``w``-weighted sums. All statistics of one job use the same
resamples (:func:`resample_weights` is seeded), so the replicates of two substitutes or two
variants are *paired*: the interval of their difference is the interval of the difference of
their replicates, which is much narrower than comparing two separate intervals.
"""
from __future__ import annotations

import numpy as np

N_BOOT = 1000
LEVEL = 0.95


def resample_weights(n_seq: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """``[n_boot, n_seq]`` multiplicities of each sequence in each resample (rows sum to n_seq)."""
    rng = np.random.default_rng([seed, n_seq])
    return rng.multinomial(n_seq, np.full(n_seq, 1.0 / n_seq), size=n_boot).astype(np.float64)


def ratio(num: np.ndarray, den: np.ndarray, weights: np.ndarray | None = None):
    """``sum(w num) / sum(w den)`` for every resample (``weights`` [B, n_seq]), or the plain ratio
    of sums when ``weights`` is None. ``num`` may have trailing axes (e.g. one per feature)."""
    if weights is None:
        return num.sum(0) / den.sum(0)
    return np.tensordot(weights, num, axes=1) / np.tensordot(weights, den, axes=1)


def explained_variance(sse: np.ndarray, x_sum: np.ndarray, x_sq: np.ndarray, count: np.ndarray,
                       weights: np.ndarray | None = None):
    """``1 - SSE / SST`` from per-sequence sums: squared error ``sse`` [n_seq], the target's sum
    ``x_sum`` [n_seq, d], sum of squared norms ``x_sq`` [n_seq] and token count ``count``.

    SST is the total variance about the per-dimension mean of the tokens counted (of each
    resample), times their number.
    """
    if weights is None:
        weights = np.ones((1, len(sse)))
        squeeze = True
    else:
        squeeze = False
    n = weights @ count
    sst = weights @ x_sq - (np.square(weights @ x_sum)).sum(1) / n
    ev = 1.0 - (weights @ sse) / sst
    return float(ev[0]) if squeeze else ev


def interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (NaN replicates ignored)."""
    lo, hi = np.nanquantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def verdict(diff_replicates: np.ndarray, higher_is_better: bool, level: float = LEVEL) -> str:
    """``better``/``worse`` when the interval of a paired difference (A - B) excludes 0, else
    ``tie``: a comparison counts only outside its uncertainty."""
    lo, hi = interval(diff_replicates, level)
    if lo > 0:
        return "better" if higher_is_better else "worse"
    if hi < 0:
        return "worse" if higher_is_better else "better"
    return "tie"
