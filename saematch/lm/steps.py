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
from ..errors import SAEMatchError
from ..results import LayerPair, index_pairs
from ..sae import load_sae, save_sae
from .heldout import (
    read_clean_loss,
    read_heldout,
    read_pair_groups,
    read_states,
    write_clean_loss,
    write_pair_groups,
)

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
                        batch_size=batch_size, dtype=dtype,
                        attrs={"corpus": str(corpus), "dataset": c.meta["dataset"]})


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


def _perms(assignments: Sequence[PathLike], pair: LayerPair) -> dict[str, np.ndarray]:
    """Every variant's permutation of ``pair``, found by what the files record."""
    return {k.variant: read_assignment(p).perm for k, p in index_pairs(assignments).items()
            if LayerPair(k.width, k.layer_a, k.layer_b) == pair}


def clean_loss_step(model_dir: PathLike, model: dict, corpus: PathLike, n_sequences: int,
                    loss_stride: int, batch_size: int, out: PathLike) -> None:
    """The unmodified model's next-token loss on the first ``n_sequences`` held-out sequences
    of one dataset, at the positions every delta-loss job of the run counts."""
    from .model import load_model
    from .substitution import Tail, clean_loss, loss_mask
    from .text import read_corpus

    lm, _ = load_model(_model_spec(model, model_dir))
    c = read_corpus(corpus)
    tokens = c.tokens[:n_sequences]
    bos = c.meta["bos_token_id"]
    mask = loss_mask(tokens, bos, loss_stride)
    ce = clean_loss(Tail(lm, bos), tokens, mask, batch_size)
    write_clean_loss(out, ce, mask, {"dataset": c.meta["dataset"], "loss_stride": loss_stride})


def substitution_step(corpora: Sequence[PathLike], activations: Sequence[PathLike],
                      sae_a: PathLike, sae_b: PathLike, assignments: Sequence[PathLike],
                      pair: LayerPair, out: PathLike, *, n_boot: int, seed: int,
                      delta_loss_substitutes: Sequence[str] = (),
                      model_dir: PathLike | None = None, model: dict | None = None,
                      clean: Sequence[PathLike] = (), batch_size: int = 8) -> None:
    """EV of every substitute and delta loss of ``delta_loss_substitutes`` for one adjacent
    pair and width, per held-out dataset, with bootstrap replicates over sequences.

    EV uses every held-out sequence (no model needed); delta loss the sequences of the clean
    loss files (the model in ``model_dir`` reruns the layers after ``pair.layer_b`` for each
    substitute).
    """
    from ..bootstrap import explained_variance, ratio, resample_weights
    from .model import load_model
    from .substitution import Tail, delta_loss, sequence_moments, squared_errors, standard_makers

    makers = standard_makers(load_sae(sae_a), load_sae(sae_b), _perms(assignments, pair))
    unknown = sorted(set(delta_loss_substitutes) - set(makers))
    if unknown:
        raise SAEMatchError(f"lm.delta_loss_substitutes names {unknown}; substitutes are "
                            f"{sorted(makers)}")
    lm = None
    groups = {}
    for dataset, held in read_heldout(corpora, activations).items():
        x_a, x_b = held.states(pair.layer_a), held.states(pair.layer_b)
        subs = {name: make(x_a, x_b) for name, make in makers.items()}
        mom = sequence_moments(x_b, held.seq, held.n_seq)
        w = resample_weights(held.n_seq, n_boot, seed)
        sse = {name: squared_errors(sub, x_b, held.seq, held.n_seq) for name, sub in subs.items()}
        group = {"substitutes": list(subs),
                 "ev": [explained_variance(sse[k], **mom) for k in subs],
                 "ev_boot": [explained_variance(sse[k], **mom, weights=w) for k in subs],
                 "attrs": {"n_sequences": held.n_seq, "n_tokens": len(x_b)}}
        if delta_loss_substitutes:
            ce, mask = read_clean_loss(clean, dataset)
            k_seq = len(ce)
            n_tok = int(held.keep[:k_seq].sum())
            if lm is None:
                lm = Tail(load_model(_model_spec(model, model_dir))[0], held.bos_token_id)
            dl = delta_loss(lm, held.tokens[:k_seq], mask, ce, pair.layer_b,
                            {k: subs[k][:n_tok] for k in delta_loss_substitutes},
                            batch_size=batch_size)
            count = mask.sum(1).astype(np.float64)
            wk = resample_weights(k_seq, n_boot, seed)
            group.update(dl_substitutes=list(dl),
                         delta_loss=[ratio(dl[k], count) for k in dl],
                         delta_loss_boot=[ratio(dl[k], count, wk) for k in dl])
            group["attrs"].update(n_loss_sequences=k_seq, n_loss_tokens=int(count.sum()),
                                  ce_clean=float(ce.sum() / count.sum()))
        groups[dataset] = group
    write_pair_groups(out, pair, groups)


def matching_score_step(activations: Sequence[PathLike], sae_a: PathLike, sae_b: PathLike,
                        assignments: Sequence[PathLike], pair: LayerPair, n_null: int,
                        n_boot: int, seed: int, out: PathLike) -> None:
    """Matching Score of every variant of one pair on all held-out tokens, with its null and
    bootstrap replicates over sequences (see :mod:`saematch.lm.matching_score`)."""
    from ..bootstrap import resample_weights
    from .matching_score import matching_scores

    x_a, x_b, seq = [], [], []
    n_seq = 0
    for path in activations:  # sequences of all datasets, numbered one after the other
        held = read_states(path)
        x_a.append(held.states(pair.layer_a))
        x_b.append(held.states(pair.layer_b))
        seq.append(held.seq + n_seq)
        n_seq += held.n_seq
    seq_all = np.concatenate(seq)
    scores = matching_scores(load_sae(sae_a), load_sae(sae_b), np.concatenate(x_a),
                             np.concatenate(x_b), _perms(assignments, pair), n_null=n_null,
                             seq=seq_all, weights=resample_weights(n_seq, n_boot, seed))
    first = next(iter(scores.values()))
    write_pair_groups(out, pair, {"all": {
        "variants": list(scores), "score": [m.score for m in scores.values()],
        "score_boot": [m.replicates for m in scores.values()], "null": [first.null],
        "null_boot": [first.null_replicates],
        "attrs": {"n_supported": first.n_supported, "n_sequences": n_seq, "n_null": n_null}}})


def substitution_table_step(pairs: Sequence[PathLike], table: PathLike,
                            comparisons: PathLike) -> None:
    """One row per dataset x pair x substitute (EV, delta loss, 95% bootstrap intervals), and
    every matched transfer compared with every other substitute on the same resamples."""
    from ..bootstrap import interval, verdict

    rows, comp = [], []
    for path in pairs:
        key, groups = read_pair_groups(path)
        for dataset, g in groups.items():
            ev = dict(zip(g["substitutes"], zip(g["ev"], g["ev_boot"], strict=True),
                          strict=True))
            dl = dict(zip(g.get("dl_substitutes", []),
                          zip(g.get("delta_loss", []), g.get("delta_loss_boot", []),
                              strict=True), strict=True))
            a = g["attrs"]
            for name, (point, boot) in ev.items():
                row = {"dataset": dataset, "layer_a": key["layer_a"], "layer_b": key["layer_b"],
                       "substitute": name, "ev": point, **_bounds("ev", boot),
                       "n_sequences": a["n_sequences"], "n_tokens": a["n_tokens"]}
                if name in dl:
                    row.update(delta_loss=dl[name][0], **_bounds("delta_loss", dl[name][1]),
                               ce_clean=a["ce_clean"], n_loss_sequences=a["n_loss_sequences"],
                               n_loss_tokens=a["n_loss_tokens"])
                rows.append(row)
            for metric, values, higher in (("ev", ev, True), ("delta_loss", dl, False)):
                for name in (n for n in values if n.startswith("transfer_")):
                    for other in (o for o in values if o != name):
                        diff = values[name][1] - values[other][1]
                        lo, hi = interval(diff)
                        comp.append({"dataset": dataset, "layer_a": key["layer_a"],
                                     "layer_b": key["layer_b"], "metric": metric,
                                     "substitute": name, "versus": other,
                                     "difference": values[name][0] - values[other][0],
                                     "difference_lo": lo, "difference_hi": hi,
                                     "verdict": verdict(diff, higher)})
    write_tsv(table, rows)
    write_tsv(comparisons, comp)


def matching_score_table_step(pairs: Sequence[PathLike], table: PathLike) -> None:
    """One row per pair x variant: score, null, their 95% intervals, and whether the score is
    above the null outside its uncertainty (paired resamples)."""
    from ..bootstrap import verdict

    rows = []
    for path in pairs:
        key, groups = read_pair_groups(path)
        g = groups["all"]
        null, null_boot = g["null"][0], g["null_boot"][0]
        for name, point, boot in zip(g["variants"], g["score"], g["score_boot"], strict=True):
            rows.append({"layer_a": key["layer_a"], "layer_b": key["layer_b"], "variant": name,
                         "score": point, **_bounds("score", boot), "null": null,
                         **_bounds("null", null_boot),
                         "vs_null": verdict(boot - null_boot, higher_is_better=True),
                         "n_supported": g["attrs"]["n_supported"],
                         "n_sequences": g["attrs"]["n_sequences"]})
    write_tsv(table, rows)


def _bounds(name: str, replicates: np.ndarray) -> dict[str, float]:
    from ..bootstrap import interval

    lo, hi = interval(np.asarray(replicates))
    return {f"{name}_lo": lo, f"{name}_hi": hi}


def quality_step(cards: Sequence[PathLike], widths: dict[str, int], out: PathLike) -> None:
    """One row per trained SAE (in input order): held-out FVU, L0, dead fraction, and why it
    is flagged; width and layer come from each card itself (``widths``: label -> features)."""
    label = {n: w for w, n in widths.items()}
    rows = []
    for path in cards:
        card = json.loads(Path(path).read_text())
        rows.append({"width": label[card["hyperparameters"]["n_features"]],
                     "layer": card["layer"], "fvu": card["fvu"], "l0": card["l0"],
                     "dead_fraction": card["dead_fraction"], "tokens": card["tokens_seen"],
                     "flagged": "; ".join(card["flags"])})
    write_tsv(out, rows)
