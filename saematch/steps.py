"""One function per workflow step, taking paths and plain parameters.

The scripts in ``scripts/`` only unpack the ``snakemake`` object into these calls, so every
step can be imported and run from a test or a notebook exactly as the workflow runs it.
torch, scipy.optimize, pandas and matplotlib are imported inside the steps that use them:
process start-up dominates the many small jobs of a run, and most steps need none of them.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import h5py
import numpy as np

from . import match
from .assign import (
    assign_dense,
    one_to_one,
    read_assignment,
    read_cost_matrix,
    top1,
    write_assignment,
)
from .atomic import PathLike, atomic_path, write_tsv
from .errors import SAEMatchError
from .features import Variant, variant_vectors
from .metrics import pair_metrics, read_pair_metrics, write_pair_metrics
from .persistence import chain_lengths, persistence_table
from .results import CrossKey, PairKey, index_pairs, pick, read_pair_key, variants_of
from .sae import fold, load_sae, save_sae
from .synthetic import PlantedSpec, SplitSpec, write_planted_layer, write_split_layer

log = logging.getLogger("saematch")


def plant_step(spec: dict, n_features: int, layer: int, params: PathLike, truth: PathLike) -> None:
    """A planted layer; with ``spec["split"]`` (``narrow_features`` and the split options), a
    wide layer planted by splitting the features of the narrower family."""
    spec = dict(spec)
    split = dict(spec.pop("split", None) or {})
    family = PlantedSpec(n_features=n_features, **spec)
    if not split:
        write_planted_layer(family, layer, params, truth)
        return
    narrow = dataclasses.replace(family, n_features=split.pop("narrow_features"))
    write_split_layer(SplitSpec(narrow=narrow, n_features=n_features, **split), layer, params,
                      truth)


def fold_step(sae: PathLike, folded: PathLike) -> None:
    """Validate an SAE and write its folded form, keeping the thresholds as ``scale``."""
    s = load_sae(sae)
    log.info("loaded %s: n_features=%d d_model=%d", s.source, s.n_features, s.d_model)
    save_sae(folded, fold(s), scale=s.threshold)


def _vectors(sae_a: PathLike, sae_b: PathLike, variant: Variant,
             pair: PairKey | CrossKey) -> tuple[np.ndarray, np.ndarray]:
    """Both sides' feature vectors; a cross-width pair's B side is the wider SAE."""
    return variant_vectors(load_sae(sae_a), load_sae(sae_b), variant,
                           rectangular=isinstance(pair, CrossKey))


def cost_step(sae_a: PathLike, sae_b: PathLike, out: PathLike, pair: PairKey | CrossKey,
              variant: Variant, block: int, device: str) -> None:
    from .costs import write_cost_matrix

    A, B = _vectors(sae_a, sae_b, variant, pair)
    log.info("cost matrix %s: n=%d, D=%d", pair, A.shape[0], A.shape[1])
    write_cost_matrix(out, A, B, block=block, device=device,
                      attrs={**pair.attrs(), **variant.attrs()})


def candidates_step(sae_a: PathLike, sae_b: PathLike, out: PathLike, pair: PairKey | CrossKey,
                    variant: Variant, k: int | None, block: int, device: str) -> None:
    """The certified solver's candidate graph (O(n k) memory) instead of a dense matrix
    (cross-width pairs: A is the narrow SAE's [n_a, D], B the wide one's [n_b, D]); ``k``
    None: :func:`saematch.certified.default_k` for the pair's size on this machine."""
    from .certified import candidate_graph, default_k, write_candidates

    A, B = _vectors(sae_a, sae_b, variant, pair)
    k = default_k(len(A), len(B), device) if k is None else k
    graph = candidate_graph(A, B, k, block=block, device=device)
    log.info("candidate graph %s: n=%d, k=%d, edges=%d", pair, A.shape[0], k, graph.nnz)
    write_candidates(out, graph, {**pair.attrs(), **variant.attrs()})


def assign_step(out: PathLike, pair: PairKey | CrossKey, variant: Variant, *,
                cost: PathLike | None = None, candidates: PathLike | None = None,
                sae_a: PathLike | None = None, sae_b: PathLike | None = None,
                solver_options: dict | None = None, block: int = 4096,
                device: str = "auto") -> None:
    """Dense LAP on a stored cost matrix, the certified solver on a stored candidate graph, or
    the identity baseline / top-1 map computed from the SAEs in the variant space. A cross-width
    pair's LAP maps each narrow feature to a distinct wide one (an injective map)."""
    if variant.method in ("identity", "top1"):
        result = match(load_sae(sae_a), load_sae(sae_b), variant, block=block, device=device)
    elif candidates is not None:
        from .certified import certified_assign, read_candidates

        A, B = _vectors(sae_a, sae_b, variant, pair)
        result = one_to_one(certified_assign(A, B, graph=read_candidates(candidates),
                                             block=block, device=device,
                                             **(solver_options or {})), len(B))
    else:
        result = assign_dense(read_cost_matrix(cost))
    log.info("%s: solver=%s kind=%s status=%s objective=%.6g gap=%.3g", pair, result.solver,
             result.kind, result.status, result.objective, result.gap)
    write_assignment(out, result, pair.attrs())


def _true_parents(truth_wide: PathLike, truth_narrow: PathLike | None) -> np.ndarray:
    """Planted truth of a cross-width pair: each wide feature's narrow parent at the same layer,
    carried back one layer through the narrow family's ``origin`` when the pair spans two."""
    with np.load(truth_wide, allow_pickle=False) as t:
        parent = t["parent"]
    if truth_narrow is None:
        return parent
    with np.load(truth_narrow, allow_pickle=False) as t:
        origin = t["origin"]
    return np.where(parent >= 0, origin[np.maximum(parent, 0)], -1)


def cross_links_step(assignment: PathLike, sae_a: PathLike, sae_b: PathLike,
                     parents_out: PathLike, links_out: PathLike, variant: Variant, *,
                     terms: Sequence[str], alpha: float, null_samples: int, seed: int,
                     block: int = 4096, device: str = "auto",
                     truth_wide: PathLike | None = None,
                     truth_narrow: PathLike | None = None) -> None:
    """The parent map of a cross-width pair and its links file (see saematch.crosswidth).

    Parent map: every wide feature (layer b) to its nearest narrow feature (layer a) in the
    variant space, by one GEMM pass; written as a many-to-one assignment indexed by wide feature
    (attribute ``maps``: ``wide_to_narrow``). Links: both maps (with the narrow -> wide LAP in
    ``assignment``) scored in the folded ``terms`` space, children lists, summary as attributes.
    """
    from .costs import nearest
    from .crosswidth import cross_links

    key = read_pair_key(assignment)
    narrow, wide = load_sae(sae_a), load_sae(sae_b)
    N, W = variant_vectors(narrow, wide, variant, rectangular=True)
    parents = top1(*nearest(W, N, block, device), n_b=len(N))
    del N, W
    write_assignment(parents_out, parents, {**key.attrs(), "maps": "wide_to_narrow"})
    true_parent = _true_parents(truth_wide, truth_narrow) if truth_wide else None
    arrays, summary = cross_links(narrow, wide, read_assignment(assignment), parents, variant,
                                  terms=tuple(terms), alpha=alpha, null_samples=null_samples,
                                  seed=seed, block=block, device=device, true_parent=true_parent)
    log.info("%s: split factor %.3f, wide features without parent %.3f", key,
             summary["split_factor"], summary["wide_no_parent"])
    write_pair_metrics(links_out, arrays, {**key.attrs(), **summary})


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


def _links_of(links: Sequence[PathLike], narrow: str, wide: str) -> dict[CrossKey, PathLike]:
    """The links files of one width pair, found by the pair each records, in layer order; one
    clear error if none is at the same layer."""
    index = dict(sorted((k, p) for k, p in index_pairs(links).items()
                        if isinstance(k, CrossKey) and (k.narrow, k.wide) == (narrow, wide)))
    if not any(k.layer_a == k.layer_b for k in index):
        raise SAEMatchError(f"no links file of {narrow} -> {wide} at the same layer")
    return index


def cross_figure_step(links: Sequence[PathLike], depth: PathLike, narrow: str, wide: str,
                      out: PathLike) -> None:
    """Split factor, children shares and splits along depth per layer of one width pair, at the
    same layer and from each layer to the next, from the links files' summaries (found by the
    pair each records) and the depth table."""
    import pandas as pd

    from . import plots

    index = _links_of(links, narrow, wide)
    layers = [k.layer_a for k in index if k.layer_a == k.layer_b]
    summaries = {
        "same": [read_pair_metrics(p)[1] for k, p in index.items() if k.layer_a == k.layer_b],
        "across": [read_pair_metrics(p)[1] for k, p in index.items() if k.layer_a != k.layer_b]}
    plots.split_factor(summaries, pd.read_csv(depth, sep="\t"), layers, narrow, wide, out)


def depth_step(links: Sequence[PathLike], narrow_assignments: Sequence[PathLike],
               narrow_metrics: Sequence[PathLike], wide_assignments: Sequence[PathLike],
               narrow: str, wide: str, variant: str, out: PathLike) -> None:
    """Whether the wide SAE splits the same narrow features at consecutive layers: one row per
    consecutive pair of the same-layer links files (saematch.crosswidth.split_along_depth),
    with the narrow and wide SAEs' own matches t -> t+1 of ``variant``."""
    from .crosswidth import split_along_depth

    same = {k.layer_a: p for k, p in _links_of(links, narrow, wide).items()
            if k.variant == variant and k.layer_a == k.layer_b}
    layers = list(same)
    pairs = list(zip(layers[:-1], layers[1:]))
    files = zip(pairs, pick(index_pairs(narrow_assignments), narrow, variant, pairs),
                pick(index_pairs(narrow_metrics), narrow, variant, pairs),
                pick(index_pairs(wide_assignments), wide, variant, pairs))
    arrays = {layer: read_pair_metrics(same[layer])[0] for layer in layers}
    rows = []
    for (t, t_next), narrow_asg, narrow_met, wide_asg in files:
        row = split_along_depth(arrays[t], arrays[t_next], read_assignment(narrow_asg).perm,
                                read_pair_metrics(narrow_met)[0]["matched"],
                                read_assignment(wide_asg).perm)
        rows.append({"narrow": narrow, "wide": wide, "variant": variant, "layer_a": t,
                     "layer_b": t_next, **row})
    write_tsv(out, rows)
