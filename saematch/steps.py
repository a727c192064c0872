"""One function per workflow step, taking paths and plain parameters.

The scripts in ``scripts/`` only unpack the ``snakemake`` object into these calls, so every
step can be imported and run from a test or a notebook exactly as the workflow runs it.
torch, scipy.optimize, pandas and matplotlib are imported inside the steps that use them:
process start-up dominates the many small jobs of a run, and most steps need none of them.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import h5py
import numpy as np

from . import match
from .assign import assign_dense, read_assignment, read_cost_matrix, write_assignment
from .atomic import PathLike, atomic_path, write_tsv
from .features import Variant, variant_vectors
from .metrics import pair_metrics, read_pair_metrics, write_pair_metrics
from .persistence import chain_lengths, persistence_table
from .sae import fold, load_sae, save_sae
from .synthetic import PlantedSpec, write_planted_layer

log = logging.getLogger("saematch")


def split_by_variant(files: Sequence[PathLike],
                     variants: Sequence[str]) -> dict[str, list[PathLike]]:
    """Undo the variant-major flattening of per-pair files that rules pass as one input list."""
    n = len(files) // len(variants)
    return {v: list(files[i * n:(i + 1) * n]) for i, v in enumerate(variants)}


def plant_step(spec: dict, n_features: int, layer: int, params: PathLike, truth: PathLike) -> None:
    write_planted_layer(PlantedSpec(n_features=n_features, **spec), layer, params, truth)


def fold_step(sae: PathLike, folded: PathLike) -> None:
    """Validate an SAE and write its folded form, keeping the thresholds as ``scale``."""
    s = load_sae(sae)
    log.info("loaded %s: n_features=%d d_model=%d", s.source, s.n_features, s.d_model)
    save_sae(folded, fold(s), scale=s.threshold)


def cost_step(sae_a: PathLike, sae_b: PathLike, out: PathLike, variant: dict, name: str,
              layers: tuple[int, int], block: int, device: str) -> None:
    from .costs import write_cost_matrix

    v = Variant.from_config(name, variant)
    A, B = variant_vectors(load_sae(sae_a), load_sae(sae_b), v)
    log.info("cost matrix %s L%d->L%d: n=%d, D=%d", name, *layers, A.shape[0], A.shape[1])
    write_cost_matrix(out, A, B, block=block, device=device, attrs={
        "variant": name, "terms": list(v.terms), "folded": v.folded, "metric": v.metric,
        "layer_a": layers[0], "layer_b": layers[1]})


def candidates_step(sae_a: PathLike, sae_b: PathLike, out: PathLike, variant: dict, name: str,
                    layers: tuple[int, int], k: int, block: int, device: str) -> None:
    """The certified solver's candidate graph (O(n k) memory) instead of a dense matrix."""
    from .certified import candidate_graph, write_candidates

    v = Variant.from_config(name, variant)
    A, B = variant_vectors(load_sae(sae_a), load_sae(sae_b), v)
    graph = candidate_graph(A, B, k, block=block, device=device)
    log.info("candidate graph %s L%d->L%d: n=%d, k=%d, edges=%d", name, *layers, A.shape[0], k,
             graph.nnz)
    write_candidates(out, graph, {"variant": name, "terms": list(v.terms), "folded": v.folded,
                                  "metric": v.metric, "layer_a": layers[0], "layer_b": layers[1]})


def assign_step(out: PathLike, variant: dict, name: str, layers: tuple[int, int], *,
                cost: PathLike | None = None, candidates: PathLike | None = None,
                sae_a: PathLike | None = None, sae_b: PathLike | None = None,
                certified: dict | None = None, block: int = 4096, device: str = "auto") -> None:
    """Dense LAP on a stored cost matrix, the certified solver on a stored candidate graph, or
    the identity baseline scored in the variant space."""
    v = Variant.from_config(name, variant)
    if v.method == "identity":
        result = match(load_sae(sae_a), load_sae(sae_b), v)
    elif candidates is not None:
        from .certified import certified_assign, read_candidates

        A, B = variant_vectors(load_sae(sae_a), load_sae(sae_b), v)
        result = certified_assign(A, B, graph=read_candidates(candidates), block=block,
                                  device=device, **(certified or {}))
    else:
        result = assign_dense(read_cost_matrix(cost))
    log.info("%s L%d->L%d: solver=%s status=%s objective=%.6g gap=%.3g", name, *layers,
             result.solver, result.status, result.objective, result.gap)
    write_assignment(out, result, {"variant": name, "layer_a": layers[0], "layer_b": layers[1]})


def metrics_step(assignment: PathLike, folded_a: PathLike, folded_b: PathLike, out: PathLike, *,
                 terms: Sequence[str], alpha: float, null_samples: int, seed: int,
                 truth: PathLike | None = None) -> None:
    a, b = load_sae(folded_a), load_sae(folded_b)
    asg = read_assignment(assignment)
    origin = None
    if truth:
        with np.load(truth, allow_pickle=False) as t:
            origin = t["origin"]
    arrays, summary = pair_metrics(a, b, asg.perm, terms=tuple(terms), alpha=alpha,
                                   null_samples=null_samples, seed=seed, origin=origin)
    summary.update(solver=asg.solver, status=asg.status, gap=asg.gap,
                   objective=asg.objective)
    write_pair_metrics(out, arrays, summary)


def summary_step(metrics: Sequence[PathLike], keys: Sequence[dict], out: PathLike) -> None:
    """One TSV row per (width, variant, pair): the summary of each per-pair metrics file."""

    rows = [{**k, **read_pair_metrics(p)[1]} for p, k in zip(metrics, keys, strict=True)]
    write_tsv(out, rows)


def persistence_step(folded: Sequence[PathLike], consecutive: Sequence[PathLike],
                     metrics: Sequence[PathLike], direct: dict[tuple[int, int], PathLike],
                     max_distance: int, table: PathLike, chains: PathLike) -> None:
    """``direct`` maps (s, t) indices into ``folded`` to assignment files of direct matches."""

    saes = [load_sae(p) for p in folded]
    perms = [read_assignment(p).perm for p in consecutive]
    matched = [read_pair_metrics(p)[0]["matched"] for p in metrics]
    direct_perms = {k: read_assignment(p).perm for k, p in direct.items()}
    rows = persistence_table(saes, perms, matched, direct_perms, max_distance)
    write_tsv(table, rows)
    with atomic_path(chains) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("length", data=chain_lengths(perms, matched))


def figures_step(metrics: dict[str, list[PathLike]], layers: Sequence[int],
                 folded: Sequence[PathLike],
                 persistence: PathLike, distribution_pairs: int, width: str,
                 out: dict[str, PathLike]) -> None:
    """The four per-width figures; ``metrics`` maps variant -> per-pair files in layer order."""
    import pandas as pd

    from . import plots

    pairs = list(zip(layers[:-1], layers[1:]))
    loaded = {v: [read_pair_metrics(p) for p in ps] for v, ps in metrics.items()}
    plots.matched_mse(loaded, pairs, width, out["matched_mse"])
    plots.mse_distributions(loaded, pairs, distribution_pairs, width, out["mse_distributions"])
    plots.persistence(pd.read_csv(persistence, sep="\t"), width, out["persistence"])
    thetas = []
    for p in folded:
        with np.load(p, allow_pickle=False) as f:
            thetas.append(f["scale"])
    plots.thresholds(list(layers), thetas, width, out["thresholds"])
