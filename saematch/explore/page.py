"""The explorer: one static page per width that opens from ``file://`` (no server, no download).

Browsers refuse ``fetch()`` of local files, so every piece of data is a sibling ``.js`` file that
the page loads with a ``<script>`` tag: ``data/meta.js`` (structure: every pair's permutation,
costs, matched flags and semantic scores as base64 typed arrays, chain lengths, the longest
chains, the tables) at once; ``data/ev_{layer}_{chunk}.js`` (evidence of ``chunk`` features)
and ``data/tok_{layer}.js`` (token -> features index for the token search) lazily, when a card
or a search needs them. Plotly (its Python package ships ``plotly.min.js``) draws the flow view
(a Sankey diagram) and the overview chart; Jinja2 renders the page.
"""
from __future__ import annotations

import base64
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ..atomic import PathLike, atomic_dir
from .chains import maximal_chains
from .evidence import Evidence

log = logging.getLogger("saematch")


@dataclass
class PairData:
    """What the explorer shows of one consecutive pair (persistence variant)."""

    layer_a: int
    layer_b: int
    perm: np.ndarray
    match_cost: np.ndarray
    mse: np.ndarray
    matched: np.ndarray
    summary: dict  # the metrics summary (match_threshold, random_mse_mean, frac_matched ...)
    semantic: dict[str, np.ndarray]  # score -> per matched pair (may be empty)
    semantic_summary: dict[str, dict]


def b64(arr: np.ndarray, dtype: str) -> str:
    """Little-endian bytes of ``arr`` as base64, for a JS typed array."""
    return base64.b64encode(np.ascontiguousarray(arr, dtype=dtype).tobytes()).decode()


def _sig(x: float, digits: int = 3) -> float:
    return float(f"{x:.{digits}g}")


def _json(obj) -> str:
    """Compact JSON safe inside a script (``</`` escaped, NaN as null)."""
    return json.dumps(_finite(obj), separators=(",", ":"), ensure_ascii=False).replace(
        "</", "<\\/")


def _js(name: str, *args) -> str:
    """``SAEM.name(arg, ...);``: how a lazily loaded data file hands its data to the page."""
    return f"SAEM.{name}({','.join(_json(a) for a in args)});\n"


def _finite(obj):
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def feature_records(ev: Evidence, start: int, stop: int) -> tuple[list[str], list[dict]]:
    """Compact per-feature evidence of features ``start:stop`` with a local token table."""
    vocab: dict[int, int] = {}

    def tok(t: int) -> int:
        return vocab.setdefault(int(t), len(vocab))

    records = []
    for i in range(start, stop):
        r: dict = {"th": _sig(ev.threshold[i])}
        if ev.has_contexts:
            r["fr"], r["ma"] = _sig(ev.freq[i]), _sig(ev.mean_act[i])
            r["ctx"] = [{"t": [tok(t) if t >= 0 else -1 for t in ev.ctx_tokens[i, c]],
                         "a": [_sig(a, 2) for a in ev.ctx_acts[i, c]],
                         "d": int(ev.ctx_dataset[i, c])}
                        for c in range(ev.ctx_tokens.shape[1]) if ev.ctx_dataset[i, c] >= 0]
        if ev.has_logit_lens:
            r["lt"] = [[tok(t), _sig(v)] for t, v in zip(ev.logit_top[i], ev.logit_top_val[i])]
            r["lb"] = [[tok(t), _sig(v)] for t, v in zip(ev.logit_bottom[i],
                                                         ev.logit_bottom_val[i])]
        if ev.explanation is not None and ev.explanation[i]:
            r["x"] = ev.explanation[i]
        records.append(r)
    texts = [ev.vocab.get(t, f"<{t}>") for t in vocab]
    return texts, records


def token_index(ev: Evidence) -> dict[str, list[int]]:
    """Normalised token text -> features whose top contexts fire on it or whose logit lens
    promotes it."""
    index: dict[str, set[int]] = {}
    sources = []
    if ev.has_contexts:
        sources.append(ev.firing_tokens())
    if ev.has_logit_lens:
        sources.append(ev.logit_top)
    for ids in sources:
        for i, row in enumerate(ids):
            for t in set(row.tolist()):
                key = ev.vocab.get(t, "").strip().casefold() if t >= 0 else ""
                if key:
                    index.setdefault(key, set()).add(i)
    return {k: sorted(v) for k, v in sorted(index.items())}


def _pair_meta(p: PairData) -> dict:
    return {"a": p.layer_a, "b": p.layer_b, "perm": b64(p.perm, "<i4"),
            "cost": b64(p.match_cost, "<f4"), "mse": b64(p.mse, "<f4"),
            "matched": b64(p.matched, "u1"),
            "random_mse": p.summary.get("random_mse_mean"),
            "threshold": p.summary.get("match_threshold"),
            "frac_matched": p.summary.get("frac_matched"),
            "sem": {k: b64(v, "<f4") for k, v in p.semantic.items()},
            "sem_summary": p.semantic_summary}


def build_explorer(out: PathLike, *, width: str, source: str, variant: str,
                   layers: Sequence[int], evidence: Sequence[Evidence], pairs: Sequence[PairData],
                   chain_lengths: np.ndarray, semantic_table: list[dict] | None = None,
                   judge_table: list[dict] | None = None, flow_chains: int = 30,
                   chunk: int = 2048) -> None:
    """Write the explorer folder ``out`` (``index.html`` and its sibling files), atomically."""
    with atomic_dir(out) as tmp:
        _write_explorer(tmp, width=width, source=source, variant=variant, layers=layers,
                        evidence=evidence, pairs=pairs, chain_lengths=chain_lengths,
                        semantic_table=semantic_table, judge_table=judge_table,
                        flow_chains=flow_chains, chunk=chunk)
    files = [f for f in Path(out).rglob("*") if f.is_file()]
    log.info("explorer width %s: %d files, %.1f MB in %s", width, len(files),
             sum(f.stat().st_size for f in files) / 1e6, out)


def _write_explorer(out: Path, *, width, source, variant, layers, evidence, pairs,
                    chain_lengths, semantic_table, judge_table, flow_chains, chunk) -> None:
    from jinja2 import Environment, PackageLoader, select_autoescape

    data = out / "data"
    data.mkdir(parents=True)
    n = evidence[0].n_features
    perms = [p.perm for p in pairs]
    flow = maximal_chains(chain_lengths, perms, flow_chains)
    first = evidence[0]
    meta = {
        "width": width, "source": source, "variant": variant, "layers": list(layers),
        "n_features": n, "chunk": chunk, "pairs": [_pair_meta(p) for p in pairs],
        "chain_len": [b64(row, "<i4") for row in chain_lengths],
        "flow": [list(c) for c in flow],
        "np_ids": [ev.neuronpedia_id for ev in evidence],
        "datasets": first.datasets, "ctx_offset": first.ctx_offset,
        "has_contexts": first.has_contexts, "has_logit_lens": first.has_logit_lens,
        "has_explanations": first.explanation is not None,
        "scores": list(pairs[0].semantic) if pairs else [],
        "semantic_table": semantic_table or [], "judge_table": judge_table or [],
    }
    (data / "meta.js").write_text(
        f"window.SAEM = window.SAEM || {{}};\nSAEM.meta = {_json(meta)};\n")
    for L, ev in zip(layers, evidence):
        for c, start in enumerate(range(0, n, chunk)):
            texts, records = feature_records(ev, start, min(n, start + chunk))
            (data / f"ev_{L}_{c}.js").write_text(_js("addEvidence", L, c, texts, records))
        (data / f"tok_{L}.js").write_text(_js("addTokens", L, token_index(ev)))
    static = resources.files("saematch.explore") / "static"
    for name in ("explorer.js", "explorer.css"):
        (out / name).write_text(static.joinpath(name).read_text())
    import plotly

    shutil.copyfile(Path(plotly.__file__).parent / "package_data" / "plotly.min.js",
                    out / "plotly.min.js")
    env = Environment(loader=PackageLoader("saematch.explore", "templates"),
                      autoescape=select_autoescape(["html"]))
    html = env.get_template("index.html.j2").render(width=width, source=source,
                                                     variant=variant, layers=list(layers),
                                                     n_features=n)
    (out / "index.html").write_text(html)
