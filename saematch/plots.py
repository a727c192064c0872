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
    ax.plot(x, [s["random_mse_mean"] for _, s in first], "k--", lw=1,
            label="random permutation (mean)")
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


def substitution(table: pd.DataFrame, width: str, path: str | os.PathLike) -> None:
    """Explained variance and Delta L of each substitute per layer pair, one row per dataset;
    bands are 95% bootstrap intervals over held-out sequences."""
    datasets = list(dict.fromkeys(table["dataset"]))
    fig, axes = plt.subplots(len(datasets), 2, figsize=(13, 4.2 * len(datasets)), squeeze=False)
    for row, dataset in zip(axes, datasets):
        sub = table[table["dataset"] == dataset]
        for name, g in sub.groupby("substitute", sort=False):
            g = g.sort_values("layer_a")
            style = "-" if str(name).startswith("transfer_") else "--"
            label = str(name).removeprefix("transfer_")
            for ax, what in zip(row, ("ev", "delta_loss")):
                if what not in g or g[what].isna().all():
                    continue
                line, = ax.plot(g["layer_a"], g[what], style, marker="o", ms=4, label=label)
                ax.fill_between(g["layer_a"], g[f"{what}_lo"], g[f"{what}_hi"],
                                color=line.get_color(), alpha=0.15)
        row[0].set_ylabel("explained variance of layer t+1")
        row[0].set_ylim(max(-1.0, row[0].get_ylim()[0]), 1.02)
        row[1].set_ylabel("\u0394L (nats / token)")
        row[1].set_yscale("symlog", linthresh=0.05)
        for ax, what in zip(row, ("EV", "\u0394L")):
            ax.set_xlabel("layer t (substitute for t+1)")
            ax.set_title(f"{what}, {dataset} (width {width}); solid: matched, dashed: baselines")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
    _save(fig, path)


def matching_score(table: pd.DataFrame, width: str, path: str | os.PathLike) -> None:
    """Matching Score per layer pair and variant with the random-permutation null; bands are
    95% bootstrap intervals over held-out sequences."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant, g in table.groupby("variant", sort=False):
        line, = ax.plot(g["layer_a"], g["score"], marker="o", label=variant)
        ax.fill_between(g["layer_a"], g["score_lo"], g["score_hi"], color=line.get_color(),
                        alpha=0.15)
    null = table.groupby("layer_a")[["null", "null_lo", "null_hi"]].first()
    ax.plot(null.index, null["null"], "k--", lw=1, label="random permutation")
    ax.fill_between(null.index, null["null_lo"], null["null_hi"], color="k", alpha=0.1)
    ax.set_xlabel("layer t (pair t\u2192t+1)")
    ax.set_ylabel("P(matched t+1 feature fires | t feature fires)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Matching Score (width {width})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def sae_quality(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Held-out FVU and L0 of every trained SAE per layer, one line per width."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for width, g in table.groupby("width", sort=False):
        ax.plot(g["layer"], g["fvu"], marker="o", label=f"width {width}")
        ax2.plot(g["layer"], g["l0"], marker="o", label=f"width {width}")
        bad = g[g["flagged"].fillna("").astype(str) != ""]
        ax.scatter(bad["layer"], bad["fvu"], s=120, facecolors="none", edgecolors="r")
    ax.set_ylabel("held-out FVU (1 - explained variance)")
    ax.set_title("SAE quality per layer (red circle: flagged)")
    ax2.set_ylabel("mean L0 (active features per token)")
    ax2.set_title("Sparsity per layer")
    for a in (ax, ax2):
        a.set_xlabel("layer")
        a.grid(alpha=0.3)
        a.legend()
    _save(fig, path)


def split_factor(summaries: dict[str, list[dict]], depth: pd.DataFrame, layers: list[int],
                 narrow: str, wide: str, path: str | os.PathLike) -> None:
    """What the wide SAE did to the narrow SAE's features, per layer: split factor, shares of
    narrow features with 0/1/2/3+ children, wide features without parent, link MSEs, and
    whether the same features split at consecutive layers.

    ``summaries``: ``same`` (one per layer, narrow and wide at that layer) and ``across`` (one
    per consecutive pair, narrow at t and wide at t+1, drawn at t); ``depth``: the split_depth
    table (one row per consecutive pair)."""
    same, across = summaries["same"], summaries["across"]
    x, xa = np.asarray(layers), np.asarray(layers[:-1])
    planted = "planted_split_factor" in same[0]
    fig, axes = plt.subplots(3, 2, figsize=(13, 13))
    (ax_sf, ax_sh), (ax_np, ax_mse), (ax_keep, ax_follow) = axes

    def col(rows: list[dict], key: str) -> np.ndarray:
        return np.array([r[key] for r in rows], dtype=float)

    ax_sf.plot(x, col(same, "split_factor"), "-o", label=f"{narrow} at t \u2192 {wide} at t")
    ax_sf.plot(xa, col(across, "split_factor"), "--s", label=f"{narrow} at t \u2192 {wide} at t+1")
    if planted:
        ax_sf.plot(x, col(same, "planted_split_factor"), ":", color="k", label="planted truth (t)")
    top = np.nanmax([*col(same, "split_factor"), *col(across, "split_factor"), 1.0])
    ax_sf.set_ylim(1, max(2.0, 1.1 * top))  # 1 = every feature kept as one
    ax_sf.set_ylabel("children per narrow feature that has any")
    ax_sf.set_title(f"Split factor ({narrow} \u2192 {wide})")

    shares = [("parents_0", "0 (absorbed / gone)"), ("parents_1", "1 (kept)"),
              ("parents_2", "2 (split)"), ("parents_3plus", "3+ (split)")]
    bottom = np.zeros(len(x))
    for key, label in shares:
        values = col(same, key)
        ax_sh.bar(x, values, bottom=bottom, label=label, width=0.8)
        bottom += values
    if planted:
        ax_sh.plot(x, col(same, "planted_parents_0"), "k_", ms=14, mew=2,
                   label="planted truth: share with 0")
    ax_sh.set_ylim(0, 1.02)
    ax_sh.set_ylabel(f"share of {narrow} features")
    ax_sh.set_title(f"Children of each {narrow} feature in {wide}, same layer")

    ax_np.plot(x, col(same, "wide_no_parent"), "-o", label="same layer")
    ax_np.plot(xa, col(across, "wide_no_parent"), "--s", label="t \u2192 t+1")
    ax_np.plot(x, 1 - col(same, "lap_frac_matched"), "-^", alpha=0.7,
               label=f"exact 1:1 LAP: {narrow} features not matched")
    if planted:
        ax_np.plot(x, col(same, "planted_wide_no_parent"), ":", color="k",
                   label="planted truth (same layer)")
    ax_np.set_ylim(0, 1.02)
    ax_np.set_ylabel("share")
    ax_np.set_title(f"{wide} features without a {narrow} parent (new features)")

    for key, label, style in (("parent_mse", "parent links", "-o"),
                              ("lap_mse", "exact 1:1 LAP", "-^")):
        line, = ax_mse.plot(x, col(same, f"{key}_q50"), style, label=f"{label}, median")
        ax_mse.fill_between(x, col(same, f"{key}_q25"), col(same, f"{key}_q75"),
                            color=line.get_color(), alpha=0.15)
    ax_mse.plot(x, col(same, "parent_match_threshold"), "k--", lw=1,
                label="parent threshold (top-1 null)")
    ax_mse.plot(x, col(same, "lap_random_mse_mean"), "k:", lw=1, label="random pairs (mean)")
    ax_mse.set_yscale("log")
    ax_mse.set_ylabel("per-feature MSE (folded space)")
    ax_mse.set_title("Matched MSE, same layer; band = IQR")

    d = depth.sort_values("layer_a")
    ax_keep.plot(d["layer_a"], d["split_kept"], "-o",
                 label="split at t+1, among those split at t")
    ax_keep.plot(d["layer_a"], d["split_base"], "--", color="gray",
                 label="split at t+1, among all (base rate)")
    ax_keep.set_ylim(0, 1.02)
    ax_keep.set_ylabel(f"share of persisting {narrow} features")
    ax_keep.set_title("Do the same features split at the next layer?")
    ax_follow.plot(d["layer_a"], d["children_followed"], "-o",
                   label=f"children at t whose {wide} match t→t+1 is a child of the partner")
    ax_follow.plot(d["layer_a"], d["children_corr"], "-s",
                   label="correlation of children counts at t and t+1")
    ax_follow.set_ylim(min(0.0, np.nanmin([*d["children_corr"], 0.0])), 1.02)
    ax_follow.set_ylabel("share / correlation")
    ax_follow.set_title("Do they split the same way (children follow)?")

    for ax in axes.ravel():
        ax.set_xlabel(f"layer t ({narrow})")
        ax.set_xticks(x, [str(v) for v in x], rotation=45 if len(x) > 12 else 0)
        ax.grid(alpha=0.3)
        if ax is ax_sh:  # beside the bars, not over them
            ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
        else:
            ax.legend(fontsize=8)
    _save(fig, path)
