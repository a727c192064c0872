"""Benchmark: explorer size and load time at Gemma Scope scale (26 layers x 16k / 65k features).

A script, not a test. It builds the explorer of a synthetic family directly from arrays shaped
like a run's results (random permutations, costs, MSEs, ~60% matched steps, chain lengths from
them), optionally with Gemma-Scope-with-model evidence (10 promoted and 10 suppressed logit-lens
tokens per feature from a 256k vocabulary, and a logit-token score per pair), then opens it in
headless Chromium from file:// and times: page load until the flow view is drawn, opening a
feature card in the last layer (its evidence file is loaded lazily), and, with the logit lens,
a token search over all layers.

    python benchmarks/bench_explorer.py                       # 16k and 65k, both kinds
    python benchmarks/bench_explorer.py --widths 16384 --layers 26 --repeats 3

Writes a markdown table to stdout and to benchmarks/out/bench_explorer.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from saematch.explore.browser import chromium, console_errors, open_explorer, search_feature
from saematch.explore.evidence import Evidence
from saematch.explore.page import PairData, build_explorer
from saematch.persistence import chain_lengths

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "out"
VOCAB = 256_000


def family(n: int, n_layers: int, logit_lens: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    evidence, pairs = [], []
    vocab = {i: f"tok{i}" for i in range(0, VOCAB, 7)} if logit_lens else {}
    ids = np.array(sorted(vocab), dtype=np.int32)
    for layer in range(n_layers):
        ev = Evidence(layer=layer, threshold=rng.lognormal(0, 0.5, n).astype(np.float32),
                      neuronpedia_id=f"gemma-2-2b/{layer}-gemmascope-res-{n // 1000}k")
        if logit_lens:
            ev.logit_top = rng.choice(ids, (n, 10)).astype(np.int32)
            ev.logit_bottom = rng.choice(ids, (n, 10)).astype(np.int32)
            ev.logit_top_val = np.sort(rng.random((n, 10)), axis=1)[:, ::-1].astype(np.float32)
            ev.logit_bottom_val = -ev.logit_top_val
            ev.vocab = vocab
        evidence.append(ev)
    for layer in range(n_layers - 1):
        mse = rng.lognormal(-3, 1, n)
        sem = {"logit_tokens": rng.random(n).astype(np.float32)} if logit_lens else {}
        pairs.append(PairData(layer, layer + 1, rng.permutation(n), mse * 4609, mse, mse < 0.06,
                              {"random_mse_mean": 0.2, "match_threshold": 0.06,
                               "frac_matched": float((mse < 0.06).mean())}, sem))
    lengths = chain_lengths([p.perm for p in pairs], [p.matched for p in pairs])
    return evidence, pairs, lengths


def measure(n: int, n_layers: int, logit_lens: bool, repeats: int) -> dict:
    evidence, pairs, lengths = family(n, n_layers, logit_lens)
    folder = Path(tempfile.mkdtemp(prefix="bench-explorer-")) / "explorer"
    t0 = time.perf_counter()
    build_explorer(folder, width=f"{n}", source="synthetic", variant="folded",
                   layers=list(range(n_layers)), evidence=evidence, pairs=pairs,
                   chain_lengths=lengths)
    build_s = time.perf_counter() - t0
    files = [f for f in folder.rglob("*") if f.is_file()]
    data = [f for f in files if f.parent.name == "data"]
    row = {"features": n, "layers": n_layers, "logit_lens": logit_lens, "build_s": build_s,
           "files": len(files), "total_mb": sum(f.stat().st_size for f in files) / 1e6,
           "data_mb": sum(f.stat().st_size for f in data) / 1e6,
           "meta_mb": (folder / "data/meta.js").stat().st_size / 1e6,
           "largest_lazy_mb": max(f.stat().st_size for f in data
                                  if f.name != "meta.js") / 1e6}
    loads, cards, searches = [], [], []
    for r in range(repeats):
        with chromium() as driver:
            loads.append(open_explorer(driver, folder))
            cards.append(search_feature(driver, n_layers - 1, n - 1 - r))
            if logit_lens:
                box = driver.find_element("id", "token-input")
                box.send_keys("tok7")
                t0 = time.perf_counter()
                driver.find_element("id", "token-go").click()
                from selenium.webdriver.support.ui import WebDriverWait

                WebDriverWait(driver, 300).until(lambda d: d.execute_script(
                    "const h = document.querySelector('#token-results h3');"
                    "return h && h.textContent.includes('feature');"))
                searches.append(time.perf_counter() - t0)
            errors = console_errors(driver)
            if errors:
                raise RuntimeError(f"console errors: {errors}")
    row |= {"load_s": statistics.median(loads), "card_s": statistics.median(cards),
            "token_search_s": statistics.median(searches) if searches else float("nan")}
    shutil.rmtree(folder.parent)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[16384, 65536])
    ap.add_argument("--layers", type=int, default=26)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = [measure(n, args.layers, lens, args.repeats) for n in args.widths
            for lens in (False, True)]
    head = ("| features x layers | evidence | total MB (plotly.min.js 4.8) | meta.js MB | "
            "largest lazy file MB | build s | page load s | open card s | token search s |")
    lines = [f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"load average {os.getloadavg()[0]:.1f}; Chromium headless; median of "
             f"{args.repeats}", "", head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['features']} x {r['layers']} | "
                     f"{'logit lens + score' if r['logit_lens'] else 'structure only'} | "
                     f"{r['total_mb']:.1f} | {r['meta_mb']:.1f} | {r['largest_lazy_mb']:.2f} | "
                     f"{r['build_s']:.1f} | {r['load_s']:.2f} | {r['card_s']:.2f} | "
                     f"{r['token_search_s']:.2f} |")
    text = "\n".join(lines)
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_explorer.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
