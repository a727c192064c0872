"""The explorer: one static page per width that opens from ``file://`` (no server, no download).

Browsers refuse ``fetch()`` of local files, so every piece of data is a sibling ``.js`` file that
the page loads with a ``<script>`` tag: ``data/meta.js`` (structure: every pair's permutation,
costs, matched flags and semantic scores as base64 typed arrays, chain lengths, the longest
chains, the tables) at once; ``data/ev_{layer}_{chunk}.js`` (evidence of ``chunk`` features),
``data/voc_{layer}.js`` (text of every token id the layer's evidence uses) and
``data/tok_{layer}.js`` (token -> features index for the token search) lazily, when a card
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


def b64(arr: np.ndarray, dtype: str) -> str:
    """Little-endian bytes of ``arr`` as base64, for a JS typed array."""
    return base64.b64encode(np.ascontiguousarray(arr, dtype=dtype).tobytes()).decode()


def significant(x: np.ndarray, digits: int = 3) -> np.ndarray:
    """``x`` rounded to ``digits`` significant digits, so JSON prints short numbers (the
    rounded value is an integer divided or multiplied by an exact power of ten)."""
    x = np.asarray(x, dtype=np.float64)
    mag = np.floor(np.log10(np.abs(np.where((x == 0) | ~np.isfinite(x), 1.0, x))))
    k = (digits - 1 - mag).astype(int)
    up, down = 10.0 ** np.maximum(k, 0), 10.0 ** np.maximum(-k, 0)
    return np.where(k >= 0, np.round(x * up) / up, np.round(x / down) * down)


def _json(obj) -> str:
    """A compact JavaScript literal of ``obj``: JSON, with NaN and Infinity written as
    JavaScript's own literals (the data files are scripts, not JSON documents, so no pass over
    millions of values is needed to replace them); ``</`` escaped."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/")


def _js(name: str, *args) -> str:
    """``SAEM.name(arg, ...);``: how a lazily loaded data file hands its data to the page."""
    return f"SAEM.{name}({','.join(_json(a) for a in args)});\n"


def feature_records(ev: Evidence, start: int, stop: int) -> list[dict]:
    """Compact evidence of features ``start:stop``; token ids index the layer's vocabulary."""
    sl = slice(start, stop)
    cols: dict[str, list] = {"th": significant(ev.threshold[sl]).tolist()}
    if ev.has_contexts:
        cols["fr"] = significant(ev.freq[sl]).tolist()
        cols["ma"] = significant(ev.mean_act[sl]).tolist()
        tokens, acts = ev.ctx_tokens[sl].tolist(), significant(ev.ctx_acts[sl], 2).tolist()
        ds = ev.ctx_dataset[sl].tolist()
        cols["ctx"] = [[{"t": t, "a": a, "d": d} for t, a, d in zip(*f) if d >= 0]
                       for f in zip(tokens, acts, ds)]
    if ev.has_logit_lens:
        cols["lt"], cols["lb"] = ev.logit_top[sl].tolist(), ev.logit_bottom[sl].tolist()
        cols["lv"] = significant(ev.logit_top_val[sl]).tolist()
        cols["bv"] = significant(ev.logit_bottom_val[sl]).tolist()
    if ev.explanation is not None:
        cols["x"] = ev.explanation[sl]
    names = list(cols)
    return [{k: v for k, v in zip(names, values) if k != "x" or v}
            for values in zip(*(cols[k] for k in names))]


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
            "sem": {k: b64(v, "<f4") for k, v in p.semantic.items()}}


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
            records = feature_records(ev, start, min(n, start + chunk))
            (data / f"ev_{L}_{c}.js").write_text(_js("addEvidence", L, c, records))
        (data / f"voc_{L}.js").write_text(_js("addVocab", L, {str(k): v for k, v in
                                                              ev.vocab.items()}))
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
