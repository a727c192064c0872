"""Workflow steps of the real-model path: model export, corpora, activations, SAE training,
hidden-state substitution and Matching Score. Plain functions of paths and parameters, like
:mod:`saematch.steps`; torch and transformers are imported only by the steps that use them.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..assign import read_assignment
from ..atomic import PathLike, write_json, write_tsv
from ..sae import load_sae, save_sae

log = logging.getLogger("saematch")


def _model_spec(model: dict, folder: PathLike | None = None):
    from .model import ModelSpec

    spec = ModelSpec.from_config(model)
    return spec if folder is None else ModelSpec(name=str(folder), dtype=spec.dtype,
                                                  device=spec.device)


def export_model_step(model: dict, out: PathLike) -> None:
    """De-quantise / convert once, so every later job loads a plain folder in seconds."""
    from .model import export_model

    export_model(_model_spec(model), out)


def corpus_step(model_dir: PathLike, dataset: str, source: dict, seq_len: int,
                train_tokens: int, eval_tokens: int, eval_fraction: float,
                out_train: PathLike, out_eval: PathLike) -> None:
    """Disjoint train / eval token sequences of one dataset (split by file, hashed)."""
    from transformers import AutoTokenizer

    from .text import TextSource, build_corpus, default_sources, split_files, write_corpus

    base = default_sources().get(dataset)
    src = TextSource(dataset, source.get("root", base.root if base else ""),
                     source.get("suffix", base.suffix if base else ".txt"))
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    train_files, eval_files = split_files(src.files(), eval_fraction)
    for files, n, out in ((train_files, train_tokens, out_train),
                          (eval_files, eval_tokens, out_eval)):
        corpus = build_corpus(tok, src, files, seq_len=seq_len, n_tokens=n)
        log.info("%s: %d sequences from %d files -> %s", dataset, len(corpus.tokens),
                 len(corpus.files), out)
        write_corpus(out, corpus)


def activations_step(model_dir: PathLike, model: dict, corpus: PathLike, batch_size: int,
                     dtype: str, out: PathLike) -> None:
    """Residual stream after every layer (Gemma Scope's hook_resid_post), BOS excluded."""
    from .activations import collect_activations
    from .model import load_model
    from .text import read_corpus

    lm, _ = load_model(_model_spec(model, model_dir))
    c = read_corpus(corpus)
    collect_activations(lm, c.tokens, out, bos_token_id=c.meta["bos_token_id"],
                        batch_size=batch_size, dtype=dtype, attrs={"corpus": str(corpus)})


def _stack(paths: Sequence[PathLike], layer: int) -> np.ndarray:
    from .activations import read_activations

    return np.concatenate([read_activations(p, layer) for p in paths])


def train_step(train: Sequence[PathLike], evals: Sequence[PathLike], layer: int, n_features: int,
               hyper: dict, seed: int, out_params: PathLike, out_card: PathLike) -> None:
    """One JumpReLU SAE, written as a Gemma Scope params.npz, with a card beside it.

    Each layer gets its own seed (``seed + layer``), as independently trained SAEs do: with one
    shared seed every layer would start from the same initial dictionary, and after a short
    training the identity permutation would look like a good matching for no real reason.
    """
    from ..device import pick_device
    from .train import TrainConfig, quality_flag, train_sae

    cfg = TrainConfig(n_features=n_features, seed=seed + layer, **hyper)
    sae, card = train_sae(_stack(train, layer), _stack(evals, layer), cfg,
                          device=pick_device("auto"), source=str(out_params))
    card.update(layer=layer, train_files=[str(p) for p in train],
                eval_files=[str(p) for p in evals], flags=quality_flag(card))
    if card["flags"]:
        log.warning("layer %d width %d flagged: %s", layer, n_features, "; ".join(card["flags"]))
    save_sae(out_params, sae)
    write_json(out_card, card)


def _perms(assignments: dict[str, Sequence[PathLike]]) -> dict[str, list[np.ndarray]]:
    return {v: [read_assignment(p).perm for p in ps] for v, ps in assignments.items()}


def substitution_step(model_dir: PathLike, model: dict, corpora: dict[str, PathLike],
                      saes: Sequence[PathLike], layers: Sequence[int],
                      assignments: dict[str, Sequence[PathLike]], batch_size: int,
                      loss_stride: int, out: PathLike) -> None:
    """EV and Delta L of every variant's substitute and every baseline, per pair and dataset."""

    from .model import load_model
    from .substitution import evaluate_substitutions, standard_makers
    from .text import read_corpus

    lm, _ = load_model(_model_spec(model, model_dir))
    models = [load_sae(p) for p in saes]
    perms = _perms(assignments)
    pairs = {layers[i]: standard_makers(models[i], models[i + 1],
                                        {v: ps[i] for v, ps in perms.items()})
             for i in range(len(layers) - 1) if layers[i + 1] == layers[i] + 1}
    rows = []
    for dataset, path in corpora.items():
        c = read_corpus(path)
        res = evaluate_substitutions(lm, c.tokens, pairs, bos_token_id=c.meta["bos_token_id"],
                                     batch_size=batch_size, loss_stride=loss_stride)
        for t, by_name in res.items():
            for name, r in by_name.items():
                rows.append({"dataset": dataset, "layer_a": t, "layer_b": t + 1,
                             "substitute": name, **r})
    write_tsv(out, rows)


def matching_score_step(activations: Sequence[PathLike], saes: Sequence[PathLike],
                        layers: Sequence[int], assignments: dict[str, Sequence[PathLike]],
                        n_null: int, out: PathLike) -> None:
    """Matching Score per pair and variant on held-out activations (see matching_score)."""

    from .matching_score import matching_score

    models = [load_sae(p) for p in saes]
    perms = _perms(assignments)
    rows = []
    x_t1 = _stack(activations, layers[0])
    for i in range(len(layers) - 1):
        x_t, x_t1 = x_t1, _stack(activations, layers[i + 1])  # each layer read once
        for v, ps in perms.items():
            ms = matching_score(models[i], models[i + 1], x_t, x_t1, ps[i], n_null=n_null)
            rows.append({"layer_a": layers[i], "layer_b": layers[i + 1], "variant": v,
                         "score": ms.score, "null": ms.null, "n_supported": ms.n_supported})
    write_tsv(out, rows)


def quality_step(cards: Sequence[PathLike], keys: Sequence[dict], out: PathLike) -> None:
    """One row per trained SAE: held-out FVU, L0, dead fraction, and why it is flagged."""

    rows = []
    for path, key in zip(cards, keys, strict=True):
        card = json.loads(Path(path).read_text())
        rows.append({**key, "fvu": card["fvu"], "l0": card["l0"],
                     "dead_fraction": card["dead_fraction"],
                     "tokens": card["tokens_seen"],
                     "flagged": "; ".join(card["flags"])})
    write_tsv(out, rows)
