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
from .results import PairKey, index_pairs, pick, read_pair_key, variants_of
from .sae import fold, load_sae, save_sae
from .synthetic import PlantedSpec, write_planted_layer

log = logging.getLogger("saematch")


def plant_step(spec: dict, n_features: int, layer: int, params: PathLike, truth: PathLike) -> None:
    write_planted_layer(PlantedSpec(n_features=n_features, **spec), layer, params, truth)


def fold_step(sae: PathLike, folded: PathLike) -> None:
    """Validate an SAE and write its folded form, keeping the thresholds as ``scale``."""
    s = load_sae(sae)
    log.info("loaded %s: n_features=%d d_model=%d", s.source, s.n_features, s.d_model)
    save_sae(folded, fold(s), scale=s.threshold)


def cost_step(sae_a: PathLike, sae_b: PathLike, out: PathLike, pair: PairKey, variant: Variant,
              block: int, device: str) -> None:
    from .costs import write_cost_matrix

    A, B = variant_vectors(load_sae(sae_a), load_sae(sae_b), variant)
    log.info("cost matrix %s: n=%d, D=%d", pair, A.shape[0], A.shape[1])
    write_cost_matrix(out, A, B, block=block, device=device,
                      attrs={**pair.attrs(), **variant.attrs()})


def candidates_step(sae_a: PathLike, sae_b: PathLike, out: PathLike, pair: PairKey,
                    variant: Variant, k: int, block: int, device: str) -> None:
    """The certified solver's candidate graph (O(n k) memory) instead of a dense matrix."""
    from .certified import candidate_graph, write_candidates

    A, B = variant_vectors(load_sae(sae_a), load_sae(sae_b), variant)
    graph = candidate_graph(A, B, k, block=block, device=device)
    log.info("candidate graph %s: n=%d, k=%d, edges=%d", pair, A.shape[0], k, graph.nnz)
    write_candidates(out, graph, {**pair.attrs(), **variant.attrs()})


def assign_step(out: PathLike, pair: PairKey, variant: Variant, *,
                cost: PathLike | None = None, candidates: PathLike | None = None,
                sae_a: PathLike | None = None, sae_b: PathLike | None = None,
                solver_options: dict | None = None, block: int = 4096,
                device: str = "auto") -> None:
    """Dense LAP on a stored cost matrix, the certified solver on a stored candidate graph, or
    the identity baseline scored in the variant space."""
    if variant.method == "identity":
        result = match(load_sae(sae_a), load_sae(sae_b), variant)
    elif candidates is not None:
        from .certified import certified_assign, read_candidates

        A, B = variant_vectors(load_sae(sae_a), load_sae(sae_b), variant)
        result = certified_assign(A, B, graph=read_candidates(candidates), block=block,
                                  device=device, **(solver_options or {}))
    else:
        result = assign_dense(read_cost_matrix(cost))
    log.info("%s: solver=%s status=%s objective=%.6g gap=%.3g", pair, result.solver,
             result.status, result.objective, result.gap)
    write_assignment(out, result, pair.attrs())


def metrics_step(assignment: PathLike, folded_a: PathLike, folded_b: PathLike, out: PathLike, *,
                 terms: Sequence[str], alpha: float, null_samples: int, seed: int,
                 truth: PathLike | None = None) -> None:
    """Per-feature metrics of one assignment, recorded under the assignment's own pair key."""
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
    write_pair_metrics(out, arrays, {**read_pair_key(assignment).attrs(), **summary})


def summary_step(metrics: Sequence[PathLike], out: PathLike) -> None:
    """One TSV row per (width, variant, pair), in input order: the key each metrics file
    records, then its summary."""
    rows = []
    for path in metrics:
        key = read_pair_key(path).attrs()
        summary = read_pair_metrics(path)[1]
        rows.append({**key, **{k: v for k, v in summary.items() if k not in key}})
    write_tsv(out, rows)


def persistence_step(folded: dict[int, PathLike], consecutive: Sequence[PathLike],
                     metrics: Sequence[PathLike], direct: Sequence[PathLike], width: str,
                     variant: str, max_distance: int, table: PathLike, chains: PathLike) -> None:
    """Chains of ``variant`` along the layers of ``folded`` ({layer: folded SAE}). Composed
    permutations are compared with every direct matching given, consecutive (distance 1) or
    in ``direct`` (distance 2 and more)."""
    layers = list(folded)
    pairs = list(zip(layers[:-1], layers[1:]))
    saes = [load_sae(folded[layer]) for layer in layers]
    perms = [read_assignment(p).perm
             for p in pick(index_pairs(consecutive), width, variant, pairs)]
    matched = [read_pair_metrics(p)[0]["matched"]
               for p in pick(index_pairs(metrics), width, variant, pairs)]
    position = {layer: i for i, layer in enumerate(layers)}
    direct_perms = {(position[k.layer_a], position[k.layer_b]): read_assignment(p).perm
                    for k, p in index_pairs([*consecutive, *direct]).items()
                    if k.width == width and k.variant == variant}
    rows = persistence_table(saes, perms, matched, direct_perms, max_distance)
    write_tsv(table, rows)
    with atomic_path(chains) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("length", data=chain_lengths(perms, matched))


def figures_step(metrics: Sequence[PathLike], folded: dict[int, PathLike],
                 persistence: PathLike, distribution_pairs: int, width: str,
                 out: dict[str, PathLike]) -> None:
    """The four per-width figures, along the layers of ``folded`` ({layer: folded SAE}), one
    line per variant of ``metrics``."""
    import pandas as pd

    from . import plots

    layers = list(folded)
    pairs = list(zip(layers[:-1], layers[1:]))
    index = index_pairs(metrics)
    loaded = {v: [read_pair_metrics(p) for p in pick(index, width, v, pairs)]
              for v in variants_of(index)}
    plots.matched_mse(loaded, pairs, width, out["matched_mse"])
    plots.mse_distributions(loaded, pairs, distribution_pairs, width, out["mse_distributions"])
    plots.persistence(pd.read_csv(persistence, sep="\t"), width, out["persistence"])
    thetas = []
    for layer in layers:
        with np.load(folded[layer], allow_pickle=False) as f:
            thetas.append(f["scale"])
    plots.thresholds(layers, thetas, width, out["thresholds"])
