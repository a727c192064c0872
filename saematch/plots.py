"""Figures (matplotlib, PNG), one function each, meant to be read at a glance."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .atomic import atomic_path  # noqa: E402

Loaded = dict[str, list[tuple[dict[str, np.ndarray], dict]]]


def _save(fig: plt.Figure, path: str | os.PathLike) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _pair_labels(pairs: list[tuple[int, int]]) -> list[str]:
    return [f"{a}\u2192{b}" for a, b in pairs]


def matched_mse(loaded: Loaded, pairs: list[tuple[int, int]], width: str,
                path: str | os.PathLike) -> None:
    """Median matched MSE (folded space) per layer pair for each variant, with the IQR, and the
    fraction of matches called matched; the random-permutation level is drawn for scale."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = np.arange(len(pairs))
    for variant, items in loaded.items():
        med = [s["mse_q50"] for _, s in items]
        lo = [s["mse_q25"] for _, s in items]
        hi = [s["mse_q75"] for _, s in items]
        line, = ax.plot(x, med, marker="o", label=variant)
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
        ax2.plot(x, [s["frac_matched"] for _, s in items], marker="o", label=variant)
    first = next(iter(loaded.values()))
    ax.plot(x, [s["random_mse_mean"] for _, s in first], "k--", lw=1, label="random permutation (mean)")
    ax.set_yscale("log")
    ax.set_ylabel("matched MSE per feature (folded space)")
    ax.set_title(f"Matched MSE per layer pair (width {width}); band = IQR")
    ax2.set_ylabel("fraction of matches below null threshold")
    ax2.set_ylim(0, 1.02)
    ax2.set_title("Matched fraction (null: random pairing, alpha quantile)")
    for a in (ax, ax2):
        a.set_xticks(x, _pair_labels(pairs), rotation=45 if len(pairs) > 12 else 0)
        a.set_xlabel("layer pair")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    _save(fig, path)


def mse_distributions(loaded: Loaded, pairs: list[tuple[int, int]], count: int, width: str,
                      path: str | os.PathLike) -> None:
    """Histograms of per-feature matched MSE at a few pairs (first, middle, last)."""
    idx = sorted(set(np.linspace(0, len(pairs) - 1, min(count, len(pairs))).round().astype(int)))
    fig, axes = plt.subplots(1, len(idx), figsize=(4.5 * len(idx), 4), squeeze=False)
    for ax, i in zip(axes[0], idx):
        all_mse = np.concatenate([items[i][0]["mse"] for items in loaded.values()])
        bins = np.logspace(np.log10(max(all_mse.min(), 1e-12)), np.log10(all_mse.max()), 60)
        for variant, items in loaded.items():
            ax.hist(items[i][0]["mse"], bins=bins, histtype="step", lw=1.5, label=variant)
        ax.axvline(next(iter(loaded.values()))[i][1]["match_threshold"], color="k", ls="--",
                   lw=1, label="matched threshold")
        ax.set_xscale("log")
        ax.set_xlabel("per-feature MSE (folded space)")
        ax.set_ylabel("features")
        ax.set_title(f"layers {pairs[i][0]}\u2192{pairs[i][1]} (width {width})")
        ax.legend(fontsize=8)
    _save(fig, path)


def persistence(table: pd.DataFrame, width: str, path: str | os.PathLike) -> None:
    """Survival of matched chains, decoder cosine along composed permutations, and agreement
    of composed with direct matching, against distance in layers."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    d = table["distance"]
    ax.plot(d, table["survival"], marker="o", label="chain survives d steps")
    ax.plot(d, table["composed_dec_cos"], marker="s", label="decoder cosine, composed partner")
    ax.plot(d, table["agree_direct"], marker="^", label="composed = direct matching")
    ax.plot(d, table["agree_direct_alive"], marker="v", ls=":",
            label="composed = direct (alive chains)")
    ax.set_xlabel("distance (layers)")
    ax.set_ylabel("fraction / cosine")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(d)
    ax.set_title(f"Feature persistence (width {width})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def thresholds(layers: list[int], thetas: list[np.ndarray], width: str,
               path: str | os.PathLike) -> None:
    """Mean JumpReLU threshold per layer (it tracks the residual-stream norm), with the IQR."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot(layers, [t.mean() for t in thetas], marker="o", label="mean threshold")
    ax.fill_between(layers, [np.quantile(t, 0.25) for t in thetas],
                    [np.quantile(t, 0.75) for t in thetas], alpha=0.2, label="IQR")
    ax.set_xlabel("layer")
    ax.set_ylabel("threshold \u03b8")
    ax.set_title(f"JumpReLU thresholds per layer (width {width})")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
