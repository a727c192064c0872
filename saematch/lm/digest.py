"""A readable digest of one width's evaluation: per-pair tables with 95% intervals and the
counts of paired comparisons that hold outside their uncertainty (markdown).

Generated from the result tables, so what a README quotes is what the run produced.
"""
from __future__ import annotations

import pandas as pd

# Columns of the per-pair tables: (metric, substitute, heading).
COLUMNS = (("ev", "transfer_folded", "EV folded"), ("ev", "transfer_cosine", "EV cosine"),
           ("ev", "transfer_identity", "EV identity"), ("ev", "layer_skip", "EV layer skip"),
           ("ev", "sae_next_reconstruction", "EV SAE_{t+1}"),
           ("delta_loss", "transfer_folded", "ΔL folded"),
           ("delta_loss", "transfer_identity", "ΔL identity"),
           ("delta_loss", "layer_skip", "ΔL layer skip"),
           ("delta_loss", "sae_next_reconstruction", "ΔL SAE_{t+1}"))
# Comparisons counted: (transfer, versus).
COMPARED = (("transfer_folded", "transfer_identity"), ("transfer_folded", "transfer_unfolded"),
            ("transfer_folded", "transfer_cosine"), ("transfer_folded", "layer_skip"),
            ("transfer_folded", "sae_next_reconstruction"))


def _cell(row: pd.Series, metric: str) -> str:
    if metric not in row or pd.isna(row[metric]):
        return "-"
    return f"{row[metric]:.2f} [{row[f'{metric}_lo']:.2f}, {row[f'{metric}_hi']:.2f}]"


def pair_table(substitution: pd.DataFrame, matching: pd.DataFrame, dataset: str) -> str:
    """One row per adjacent pair: EV and delta loss of the main substitutes on ``dataset``, and
    the folded Matching Score with its null."""
    sub = substitution[substitution.dataset == dataset]
    present = [(m, s, h) for m, s, h in COLUMNS
               if not sub[sub.substitute == s].get(m, pd.Series(dtype=float)).isna().all()]
    head = ["pair", *[h for _, _, h in present], "Matching Score folded (null)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (a, b), g in sub.groupby(["layer_a", "layer_b"], sort=True):
        by = g.set_index("substitute")
        cells = [f"{a}→{b}"] + [_cell(by.loc[s], m) if s in by.index else "-"
                                for m, s, _ in present]
        ms = matching[(matching.layer_a == a) & (matching.variant == "folded")]
        cells.append(f"{_cell(ms.iloc[0], 'score')} ({ms.iloc[0]['null']:.3f})"
                     if len(ms) else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict_counts(comparisons: pd.DataFrame) -> str:
    """How often each transfer is better / tied / worse than each reference, per metric and
    dataset, counting only differences whose paired 95% interval excludes 0."""
    lines = ["| comparison | metric | dataset | better | tie | worse |",
             "|---|---|---|---|---|---|"]
    for name, versus in COMPARED:
        rows = comparisons[(comparisons.substitute == name) & (comparisons.versus == versus)]
        for (metric, dataset), g in rows.groupby(["metric", "dataset"], sort=False):
            counts = g.verdict.value_counts()
            lines.append(f"| {name.removeprefix('transfer_')} vs "
                         f"{versus.removeprefix('transfer_')} | {metric} | {dataset} | "
                         f"{counts.get('better', 0)} | {counts.get('tie', 0)} | "
                         f"{counts.get('worse', 0)} |")
    return "\n".join(lines)


def digest(substitution: pd.DataFrame, comparisons: pd.DataFrame, matching: pd.DataFrame,
           width: str) -> str:
    parts = [f"# Evaluation digest, width {width}", "",
             "Values with 95% bootstrap intervals over held-out sequences. EV: explained variance "
             "of layer t+1's state; ΔL: change of next-token loss, nats per token.", ""]
    for dataset in dict.fromkeys(substitution.dataset):
        parts += [f"## {dataset}", "", pair_table(substitution, matching, dataset), ""]
    above = matching[matching.vs_null == "better"].groupby("variant").size()
    total = matching.groupby("variant").size()
    parts += ["## Paired comparisons (outside their 95% interval)", "",
              verdict_counts(comparisons), "",
              "Matching Score above its null: " + ", ".join(
                  f"{v} {above.get(v, 0)}/{n}" for v, n in total.items()), ""]
    return "\n".join(parts)
