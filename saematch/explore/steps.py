"""Workflow steps of the explorer stage, plain functions of paths and parameters like
:mod:`saematch.steps` (the ``scripts/explore_*.py`` only unpack the ``snakemake`` object)."""
from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import h5py
import numpy as np

from ..assign import read_assignment
from ..atomic import PathLike, write_tsv
from ..errors import SAEMatchError
from ..metrics import read_pair_metrics
from ..results import index_pairs, pick, read_pair_key, variants_of
from ..sae import load_sae
from .judge import JudgeConfig

log = logging.getLogger("saematch")


def evidence_step(sae: PathLike, layer: int, width: str, out: PathLike, *,
                  activations: Sequence[PathLike] = (), corpora: Sequence[PathLike] = (),
                  model_dir: PathLike | None = None,
                  neuronpedia_template: str | None = None,
                  explanations: PathLike | None = None, contexts: int = 10,
                  before: int = 12, after: int = 4, logit_tokens: int = 10,
                  device: str = "auto") -> None:
    """Evidence of every feature of one SAE (see :mod:`saematch.explore.evidence`): contexts
    where held-out activations are given, the logit lens where a model folder is given,
    Neuronpedia id and explanations where configured."""
    from .evidence import build_evidence, load_held_out, neuronpedia_id, write_evidence

    s = load_sae(sae)
    held = load_held_out(activations, corpora, layer) if activations else None
    np_id = neuronpedia_id(sae, neuronpedia_template, layer, width)
    ev = build_evidence(s, layer, held=held, model_dir=model_dir, np_id=np_id,
                        explanations_root=explanations, contexts=contexts, before=before,
                        after=after, logit_tokens=logit_tokens, device=device)
    write_evidence(out, ev)


def _stack(paths: Sequence[PathLike], layer: int) -> np.ndarray:
    from ..lm.activations import read_activations

    return np.concatenate([read_activations(p, layer) for p in paths])


def semantic_step(evidence_a: PathLike, evidence_b: PathLike, assignments: Sequence[PathLike],
                  metrics: Sequence[PathLike], outputs: dict[str, PathLike], *,
                  null_samples: int, seed: int, sae_a: PathLike | None = None,
                  sae_b: PathLike | None = None, activations: Sequence[PathLike] = ()) -> None:
    """Semantic scores of one layer pair's matches, for every variant of ``outputs`` (variant
    -> output file), against one set of random pairs (see :mod:`saematch.explore.semantic`);
    activation correlation where held-out activations and the two SAEs are given. Assignment
    and metrics files are found by what they record."""
    from .evidence import read_evidence
    from .semantic import activation_correlations, pair_scores, write_pair_scores

    ev_a, ev_b = read_evidence(evidence_a), read_evidence(evidence_b)
    asg, met = index_pairs(assignments), index_pairs(metrics)
    keys = {k.variant: k for k in asg if k.variant in outputs}
    missing = sorted(set(outputs) - set(keys))
    if missing or not keys:
        raise SAEMatchError(f"no assignment among the inputs for variant(s) {missing}")
    perms = {v: read_assignment(asg[k]).perm for v, k in keys.items()}
    correlate = None
    if activations:
        key = next(iter(keys.values()))
        correlate = functools.partial(activation_correlations, load_sae(sae_a), load_sae(sae_b),
                                      _stack(activations, key.layer_a),
                                      _stack(activations, key.layer_b))

    scores = pair_scores(ev_a, ev_b, perms, null_samples=null_samples, seed=seed,
                         correlate=correlate)
    for v, key in keys.items():
        for name, (score, null) in scores[v].items():
            log.info("%s %s: mean %.4f (null %.4f) over %d defined pairs", key, name,
                     np.nanmean(score) if np.isfinite(score).any() else np.nan,
                     np.nanmean(null) if np.isfinite(null).any() else np.nan,
                     int(np.isfinite(score).sum()))
        write_pair_scores(outputs[v], scores[v], read_pair_metrics(met[key])[0]["matched"], key)


def semantic_table_step(files: Sequence[PathLike], table: PathLike, figure: PathLike) -> None:
    """One row per width x variant x pair x score (in input order, each keyed by what its file
    records), and the figure of the table."""
    import pandas as pd

    from .semantic import plot_semantic_table, read_pair_scores

    rows = [{**read_pair_key(path).attrs(), "score": name, **summary}
            for path in files for name, summary in read_pair_scores(path)[1].items()]
    write_tsv(table, rows)
    plot_semantic_table(pd.DataFrame(rows), figure)


def _chains(path: PathLike) -> np.ndarray:
    with h5py.File(path, "r") as h5:
        return h5["length"][()]


def judge_step(chains: PathLike, assignments: Sequence[PathLike], evidence: dict[int, PathLike],
               width: str, variant: str, config: JudgeConfig, paths: int, min_length: int,
               table: PathLike, judgements: PathLike) -> None:
    """The LLM judge along the ``paths`` longest feature paths of ``variant``'s chains (along
    the layers of ``evidence``, {layer: evidence file}); answers per step and counts per pair."""
    from .chains import maximal_chains
    from .evidence import read_evidence
    from .judge import ChatClient, judge_paths, tabulate

    layers = list(evidence)
    perms = [read_assignment(p).perm for p in
             pick(index_pairs(assignments), width, variant, list(zip(layers[:-1], layers[1:])))]
    chosen = maximal_chains(_chains(chains), perms, paths, min_length)
    log.info("judge: %d feature paths, %d steps, model %s at %s", len(chosen),
             sum(p[2] for p in chosen), config.model, config.endpoint)
    rows = judge_paths(chosen, layers, perms, [read_evidence(evidence[L]) for L in layers],
                       ChatClient(config))
    write_tsv(judgements, rows if rows else [{"path": None}])
    write_tsv(table, tabulate(rows, layers))


def explorer_step(out: PathLike, *, width: str, source: str, variant: str,
                  evidence: dict[int, PathLike], assignments: Sequence[PathLike],
                  metrics: Sequence[PathLike], chains: PathLike,
                  semantic: Sequence[PathLike] = (), judge_table: PathLike | None = None,
                  flow_chains: int = 30, chunk: int = 2048) -> None:
    """The explorer folder of one width (see :mod:`saematch.explore.page`), along the layers of
    ``evidence`` ({layer: evidence file}). ``variant`` is the matching whose chains, partners and
    scores the page shows; ``semantic`` holds every variant's per-pair score files (may be
    empty: no token evidence). Inputs are found by what each file records."""
    import pandas as pd

    from .evidence import read_evidence
    from .page import PairData, build_explorer
    from .semantic import read_pair_scores

    layers = list(evidence)
    pairs = list(zip(layers[:-1], layers[1:]))
    index = index_pairs(semantic)
    scores = {v: [read_pair_scores(p) for p in pick(index, width, v, pairs)]
              for v in variants_of(index)}
    table = [{"variant": v, "layer_a": a, "layer_b": b, "score": name, **summary}
             for v, by_pair in scores.items() for (a, b), (_, by_score) in zip(pairs, by_pair)
             for name, summary in by_score.items()]
    data = []
    for k, (asg, met) in enumerate(zip(pick(index_pairs(assignments), width, variant, pairs),
                                       pick(index_pairs(metrics), width, variant, pairs))):
        a = read_assignment(asg)
        arrays, summary = read_pair_metrics(met)
        sem = scores[variant][k][0] if scores else {}
        data.append(PairData(layers[k], layers[k + 1], a.perm, a.match_cost, arrays["mse"],
                             arrays["matched"], summary, sem))
    judge = pd.read_csv(judge_table, sep="\t").to_dict("records") if judge_table else None
    build_explorer(out, width=width, source=source, variant=variant, layers=layers,
                   evidence=[read_evidence(evidence[L]) for L in layers], pairs=data,
                   chain_lengths=_chains(chains), semantic_table=table, judge_table=judge,
                   flow_chains=flow_chains, chunk=chunk)
