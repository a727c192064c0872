"""Workflow steps of the explorer stage, plain functions of paths and parameters like
:mod:`saematch.steps` (the ``scripts/explore_*.py`` only unpack the ``snakemake`` object)."""
from __future__ import annotations

import logging
from collections.abc import Sequence

import h5py
import numpy as np

from ..assign import read_assignment
from ..atomic import PathLike, write_tsv
from ..metrics import read_pair_metrics
from ..sae import load_sae

log = logging.getLogger("saematch")


def evidence_step(sae: PathLike, layer: int, width: str, out: PathLike, *,
                  activations: Sequence[PathLike] = (), corpora: Sequence[PathLike] = (),
                  datasets: Sequence[str] = (), model_dir: PathLike | None = None,
                  neuronpedia_template: str | None = None,
                  explanations: PathLike | None = None, contexts: int = 10,
                  before: int = 12, after: int = 4, logit_tokens: int = 10,
                  device: str = "auto") -> None:
    """Evidence of every feature of one SAE (see :mod:`saematch.explore.evidence`): contexts
    where held-out activations are given, the logit lens where a model folder is given,
    Neuronpedia id and explanations where configured."""
    from .evidence import build_evidence, load_held_out, neuronpedia_id, write_evidence

    s = load_sae(sae)
    held = load_held_out(activations, corpora, datasets, layer) if activations else None
    np_id = neuronpedia_id(sae, neuronpedia_template, layer, width)
    ev = build_evidence(s, layer, held=held, model_dir=model_dir, np_id=np_id,
                        explanations_root=explanations, contexts=contexts, before=before,
                        after=after, logit_tokens=logit_tokens, device=device)
    write_evidence(out, ev)


def _stack(paths: Sequence[PathLike], layer: int) -> np.ndarray:
    from ..lm.activations import read_activations

    return np.concatenate([read_activations(p, layer) for p in paths])


def semantic_step(evidence_a: PathLike, evidence_b: PathLike, assignment: PathLike,
                  metrics: PathLike, out: PathLike, *, layers: tuple[int, int],
                  null_samples: int, seed: int, sae_a: PathLike | None = None,
                  sae_b: PathLike | None = None, activations: Sequence[PathLike] = ()) -> None:
    """Semantic scores of one pair's matches and of random pairs (see
    :mod:`saematch.explore.semantic`); activation correlation where held-out activations and
    the two SAEs are given."""
    from .evidence import read_evidence
    from .semantic import activation_correlations, pair_scores, write_pair_scores

    ev_a, ev_b = read_evidence(evidence_a), read_evidence(evidence_b)
    perm = read_assignment(assignment).perm
    matched = read_pair_metrics(metrics)[0]["matched"]
    correlate = None
    if activations:
        a, b = load_sae(sae_a), load_sae(sae_b)
        x_a, x_b = _stack(activations, layers[0]), _stack(activations, layers[1])

        def correlate(perms):
            return activation_correlations(a, b, x_a, x_b, perms)

    scores = pair_scores(ev_a, ev_b, perm, null_samples=null_samples, seed=seed,
                         correlate=correlate)
    for name, (score, null) in scores.items():
        log.info("L%d->L%d %s: mean %.4f (null %.4f) over %d defined pairs", *layers, name,
                 np.nanmean(score) if np.isfinite(score).any() else np.nan,
                 np.nanmean(null) if np.isfinite(null).any() else np.nan,
                 int(np.isfinite(score).sum()))
    write_pair_scores(out, scores, matched)


def semantic_table_step(files: Sequence[PathLike], keys: Sequence[dict], table: PathLike,
                        figure: PathLike) -> None:
    """One row per width x variant x pair x score, and the figure of the table."""
    import pandas as pd

    from .semantic import plot_semantic_table, read_pair_scores

    rows = [{**key, "score": name, **summary}
            for path, key in zip(files, keys, strict=True)
            for name, summary in read_pair_scores(path)[1].items()]
    write_tsv(table, rows)
    plot_semantic_table(pd.DataFrame(rows), figure)


def _chains(path: PathLike) -> np.ndarray:
    with h5py.File(path, "r") as h5:
        return h5["length"][()]


def judge_step(chains: PathLike, assignments: Sequence[PathLike], evidence: Sequence[PathLike],
               layers: Sequence[int], judge: dict, table: PathLike,
               judgements: PathLike) -> None:
    """The LLM judge along the longest feature paths; answers per step and counts per pair."""
    from .chains import maximal_chains
    from .evidence import read_evidence
    from .judge import ChatClient, JudgeConfig, judge_paths, tabulate

    cfg = JudgeConfig(**{k: judge[k] for k in ("endpoint", "model", "api_key_env", "retries",
                                               "backoff", "timeout")})
    perms = [read_assignment(p).perm for p in assignments]
    paths = maximal_chains(_chains(chains), perms, judge["paths"], judge["min_length"])
    log.info("judge: %d feature paths, %d steps, model %s at %s", len(paths),
             sum(p[2] for p in paths), cfg.model, cfg.endpoint)
    rows = judge_paths(paths, layers, perms, [read_evidence(p) for p in evidence],
                       ChatClient(cfg))
    write_tsv(judgements, rows if rows else [{"path": None}])
    write_tsv(table, tabulate(rows, layers))


def explorer_step(out: PathLike, *, width: str, source: str, variant: str,
                  layers: Sequence[int], evidence: Sequence[PathLike],
                  assignments: Sequence[PathLike], metrics: Sequence[PathLike],
                  chains: PathLike, semantic: dict[str, Sequence[PathLike]] | None = None,
                  judge_table: PathLike | None = None, flow_chains: int = 30,
                  chunk: int = 2048) -> None:
    """The explorer folder of one width (see :mod:`saematch.explore.page`). ``semantic`` maps
    each variant to its per-pair score files in layer order (may be empty); ``variant`` is the
    matching whose chains, partners and scores the page shows."""
    import pandas as pd

    from .evidence import read_evidence
    from .page import PairData, build_explorer
    from .semantic import read_pair_scores

    semantic = {v: [read_pair_scores(p) for p in files]
                for v, files in (semantic or {}).items() if files}  # none: no token evidence
    table = [{"variant": v, "layer_a": layers[k], "layer_b": layers[k + 1], "score": name,
              **summary} for v, scores in semantic.items() for k, (_, by_score) in
             enumerate(scores) for name, summary in by_score.items()]
    pairs = []
    for k, (asg, met) in enumerate(zip(assignments, metrics, strict=True)):
        a = read_assignment(asg)
        arrays, summary = read_pair_metrics(met)
        sem = semantic[variant][k][0] if semantic else {}
        pairs.append(PairData(layers[k], layers[k + 1], a.perm, a.match_cost, arrays["mse"],
                              arrays["matched"], summary, sem))
    judge = pd.read_csv(judge_table, sep="\t").to_dict("records") if judge_table else None
    build_explorer(out, width=width, source=source, variant=variant, layers=layers,
                   evidence=[read_evidence(p) for p in evidence], pairs=pairs,
                   chain_lengths=_chains(chains), semantic_table=table, judge_table=judge,
                   flow_chains=flow_chains, chunk=chunk)
