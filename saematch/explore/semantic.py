"""Semantic agreement of matched pairs, measured offline against random pairs.

For a layer pair (a, b) and a permutation ``perm`` (feature i of a matched to ``perm[i]`` of b)
three scores are computed for every matched pair (i, j = perm[i]), each only where it is
defined (NaN otherwise):

- ``context_tokens`` = |T_i ∩ T_j| / |T_i ∪ T_j|, the Jaccard overlap of the sets of *firing
  tokens* (token ids at the firing position) of the two features' top-k held-out contexts.
  What a person reading the two feature cards sees first. Defined when both features fire.
- ``logit_tokens`` = |U_i ∩ U_j| / |U_i ∪ U_j|, the Jaccard overlap of the two decoder rows'
  top-m promoted logit-lens tokens. Data-free (needs only the model's unembedding).
- ``activation_corr`` = Pearson correlation of f_a,i and f_b,j (the two SAEs' activations) over
  the same held-out tokens. Defined when both vary.

The null is the same score for random pairs: each feature of layer a paired with a uniformly
random feature of layer b, ``null_samples`` independent permutations (pooled). The summary of
a score reports, over the pairs where it is defined: mean, quartiles, the null's mean and 95th
percentile, ``frac_above_null95`` (fraction of matched pairs whose score exceeds the null's
95th percentile; about 0.05 or less for pairs no better than random) and the mean over the pairs
the metrics call *matched*.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import h5py
import numpy as np

from ..atomic import PathLike, atomic_path
from ..errors import SAEMatchError
from ..results import PairKey
from ..sae import SAE
from .evidence import Evidence

SCORES = ("context_tokens", "logit_tokens", "activation_corr")
SUMMARY = ("n_pairs", "n_defined", "mean", "q25", "q50", "q75", "mean_matched", "null_mean",
           "null_q95", "frac_above_null95")  # the columns of a score's table row, in order


def token_sets(ids: np.ndarray) -> np.ndarray:
    """Rows of token ids [n, k] (-1 = none) with duplicates within a row replaced by -1."""
    s = np.sort(ids, axis=1)
    dup = np.zeros_like(s, dtype=bool)
    dup[:, 1:] = s[:, 1:] == s[:, :-1]
    return np.where(dup, -1, s)


def jaccard(sets_a: np.ndarray, sets_b: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Jaccard overlap of row i of ``sets_a`` with row ``perm[i]`` of ``sets_b`` (sets from
    :func:`token_sets`); NaN where either set is empty."""
    b = sets_b[perm]
    inter = ((sets_a[:, :, None] == b[:, None, :]) & (sets_a[:, :, None] >= 0)).any(2).sum(1)
    size_a, size_b = (sets_a >= 0).sum(1), (b >= 0).sum(1)
    union = size_a + size_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((size_a > 0) & (size_b > 0), inter / union, np.nan)


def activation_correlations(sae_a: SAE, sae_b: SAE, x_a: np.ndarray, x_b: np.ndarray,
                            perms: Sequence[np.ndarray], batch: int = 2048) -> np.ndarray:
    """[len(perms), n] Pearson correlation of f_a,i with f_b,perm[i] on the same tokens."""
    if len(x_a) != len(x_b):
        raise SAEMatchError(f"activations of the two layers hold {len(x_a)} and {len(x_b)} "
                            "tokens; they must be the same tokens")
    n = sae_a.n_features
    s_a, s_b = np.zeros(n), np.zeros(n)
    ss_a, ss_b = np.zeros(n), np.zeros(n)
    s_ab = np.zeros((len(perms), n))
    for s in range(0, len(x_a), batch):
        fa = sae_a.encode(x_a[s:s + batch]).astype(np.float64)
        fb = sae_b.encode(x_b[s:s + batch]).astype(np.float64)
        s_a += fa.sum(0)
        s_b += fb.sum(0)
        ss_a += (fa * fa).sum(0)
        ss_b += (fb * fb).sum(0)
        for k, p in enumerate(perms):
            s_ab[k] += np.einsum("ti,ti->i", fa, fb[:, p])
    N = len(x_a)
    var_a = ss_a / N - (s_a / N) ** 2
    var_b = ss_b / N - (s_b / N) ** 2
    out = np.full((len(perms), n), np.nan)
    for k, p in enumerate(perms):
        cov = s_ab[k] / N - (s_a / N) * (s_b[p] / N)
        ok = (var_a > 1e-12) & (var_b[p] > 1e-12)
        out[k, ok] = cov[ok] / np.sqrt(var_a[ok] * var_b[p][ok])
    return out


def null_perms(n: int, samples: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.permutation(n) for _ in range(samples)]


def pair_scores(ev_a: Evidence, ev_b: Evidence, perms: dict[str, np.ndarray], *,
                null_samples: int = 5, seed: int = 0,
                correlate: Callable[[Sequence[np.ndarray]], np.ndarray] | None = None
                ) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """For each matching of ``perms`` (name -> perm): ``score -> (per matched pair [n], null
    [n * null_samples])`` for every score the evidence allows; the null (random pairs) is the
    same for all of them. ``correlate(perms)`` gives activation correlations (see
    :func:`activation_correlations`) where held-out activations are at hand."""
    n = len(next(iter(perms.values())))
    nulls = null_perms(n, null_samples, seed)
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {name: {} for name in perms}
    sets = []
    if ev_a.has_contexts and ev_b.has_contexts:
        sets.append(("context_tokens", token_sets(ev_a.firing_tokens()),
                     token_sets(ev_b.firing_tokens())))
    if ev_a.has_logit_lens and ev_b.has_logit_lens:
        sets.append(("logit_tokens", token_sets(ev_a.logit_top), token_sets(ev_b.logit_top)))
    for score, a, b in sets:
        null = np.concatenate([jaccard(a, b, p) for p in nulls])
        for name, perm in perms.items():
            out[name][score] = (jaccard(a, b, perm), null)
    if correlate is not None:
        corr = correlate([*perms.values(), *nulls])
        null = corr[len(perms):].ravel()
        for k, name in enumerate(perms):
            out[name]["activation_corr"] = (corr[k], null)
    return out


def summarize(score: np.ndarray, null: np.ndarray, matched: np.ndarray) -> dict:
    """The table row of one score (see module docstring)."""
    ok, null_ok = np.isfinite(score), null[np.isfinite(null)]
    row = {"n_defined": int(ok.sum()), "n_pairs": len(score)}
    s = score[ok]
    if not len(s) or not len(null_ok):
        return row | {k: np.nan for k in ("mean", "q25", "q50", "q75", "null_mean", "null_q95",
                                           "frac_above_null95", "mean_matched")}
    q95 = float(np.quantile(null_ok, 0.95))
    sm = score[ok & matched]
    return row | {"mean": float(s.mean()), "q25": float(np.quantile(s, 0.25)),
                  "q50": float(np.quantile(s, 0.5)), "q75": float(np.quantile(s, 0.75)),
                  "null_mean": float(null_ok.mean()), "null_q95": q95,
                  "frac_above_null95": float((s > q95).mean()),
                  "mean_matched": float(sm.mean()) if len(sm) else np.nan}


def write_pair_scores(path: PathLike, scores: dict[str, tuple[np.ndarray, np.ndarray]],
                      matched: np.ndarray, key: PairKey) -> None:
    """HDF5: per score a dataset ``{score}`` [n] (NaN = undefined) and ``{score}_null``;
    the summary of each score as attributes ``{score}.{field}``; the pair's key."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs.update(key.attrs())
        h5.attrs["scores"] = ",".join(scores)
        for name, (score, null) in scores.items():
            h5.create_dataset(name, data=score.astype(np.float32))
            h5.create_dataset(f"{name}_null", data=null.astype(np.float32))
            for k, v in summarize(score, null, matched).items():
                h5.attrs[f"{name}.{k}"] = v


def read_pair_scores(path: PathLike) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Per-pair score arrays and the summary of each score."""
    try:
        with h5py.File(path, "r") as h5:
            names = [s for s in str(h5.attrs["scores"]).split(",") if s]
            arrays = {s: h5[s][()] for s in names}
            summary = {s: {k: h5.attrs[f"{s}.{k}"].item() for k in SUMMARY} for s in names}
            return arrays, summary
    except (OSError, KeyError) as exc:
        raise SAEMatchError(f"{path}: cannot read semantic scores ({exc})") from exc


def plot_semantic_table(table, path: PathLike) -> None:
    """One panel per score (rows) and width (columns): the mean score of matched pairs per
    layer pair for each variant, with the null's mean (dashed) and 95th percentile (dotted)."""
    from ..plots import _save, plt

    scores = [s for s in SCORES if s in set(table["score"])]
    widths = list(dict.fromkeys(table["width"].astype(str)))
    fig, axes = plt.subplots(len(scores), len(widths), figsize=(6.5 * len(widths),
                                                                  3.6 * len(scores)),
                             squeeze=False)
    for r, score in enumerate(scores):
        for c, width in enumerate(widths):
            ax = axes[r][c]
            sub = table[(table["score"] == score) & (table["width"].astype(str) == width)]
            labels = None
            for variant, g in sub.groupby("variant", sort=False):
                g = g.sort_values("layer_a")
                labels = [f"{a}\u2192{b}" for a, b in zip(g["layer_a"], g["layer_b"])]
                ax.plot(labels, g["mean"], marker="o", ms=4, label=str(variant))
            if labels is not None:
                ref = sub[sub["variant"] == sub["variant"].iloc[0]].sort_values("layer_a")
                ax.plot(labels, ref["null_mean"], "k--", lw=1, label="random pairs: mean")
                ax.plot(labels, ref["null_q95"], "k:", lw=1, label="random pairs: 95th pct")
                ax.tick_params(axis="x", rotation=45 if len(labels) > 10 else 0)
            ax.set_title(f"{score.replace('_', ' ')} (width {width})")
            ax.set_xlabel("layer pair")
            ax.set_ylabel("mean over the matching's pairs")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    _save(fig, path)
