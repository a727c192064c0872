"""Benchmark: cost of cross-width matching (narrow x wide), Gemma-Scope-shaped.

A script, not a test. Builds a narrow SAE and a wide SAE planted from it by splitting (d_model
2304, folded decoder + encoder + b_enc, D = 4609, the latent model of bench_assign.py: each
narrow feature has 0 (10%) or 1-4 noisy children, the rest of the wide SAE is new features), caches
them as params.npz under benchmarks/out/cache/, then times in fresh subprocesses (peak RSS each):

- ``gemm``: one plain blockwise GEMM pass over the wide x narrow costs (``cost_blocks``, wide
  rows in blocks against all narrow columns, as the parent map runs it), the floor of anything
  that looks at every pair;
- ``links``: what the ``cross_links`` job does: feature vectors, the parent map (``nearest``,
  one pass), then ``cross_links`` (the top-1 null: a random rotation of the residual stream and
  ceil(100/alpha) wide rows against the narrow SAE; scoring; children lists), given a
  placeholder injective map for the LAP part (the exact rectangular LAP at 16k x 65k needs the
  certified solver). The null is also timed on its own (``null``, included in ``cross_links``);
- ``dense``: the exact rectangular LAP, dense (cost matrix + ``assign_dense``, LAPJV) at sizes that
  fit in memory.

    python benchmarks/bench_crosswidth.py          # 16k x 65k; dense at 2k x 8k and 4k x 16k
    python benchmarks/bench_crosswidth.py --narrow 4096 --wide 16384 --dense 1024x4096
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
CACHE = ROOT / "benchmarks" / "out" / "cache"
ALPHA = 0.01


def make_family(n_narrow: int, n_wide: int, seed: int = 0, noise: float = 0.5):
    """Narrow and wide SAEs (layer 12) and each wide feature's planted parent (-1: new)."""
    from bench_assign import D_MODEL, LAYER_A, _latents, _sae, _unit

    d = D_MODEL
    rng = np.random.default_rng([seed, n_narrow, n_wide, d])
    lat = _latents(rng, n_narrow, d)
    narrow = _sae(lat, LAYER_A, "narrow")
    kept = rng.random(n_narrow) >= 0.1
    mean_kept = 0.85 * n_wide / n_narrow / 0.9
    q = float(np.clip((mean_kept - 1) / 3, 0, 1))
    counts = np.where(kept, 1 + rng.binomial(3, q, n_narrow), 0)
    parent = np.repeat(np.arange(n_narrow), counts)
    if len(parent) > n_wide:
        parent = np.sort(rng.choice(parent, n_wide, replace=False))
    parent = np.concatenate([parent, np.full(n_wide - len(parent), -1)])
    parent = parent[rng.permutation(n_wide)]
    wide = {"dec": np.empty((n_wide, d), np.float32), "enc": np.empty((n_wide, d), np.float32),
            **{k: np.empty(n_wide, np.float32) for k in ("enc_gain", "theta", "bias")}}
    sd = noise / np.sqrt(d)
    for s in range(0, n_wide, 8192):  # in chunks: the wide latents are the memory
        rows = slice(s, min(s + 8192, n_wide))
        p = parent[rows]
        child = p >= 0
        new = _latents(rng, len(p), d)
        pp = np.maximum(p, 0)
        z = {k: rng.standard_normal(v.shape, dtype=np.float32) for k, v in new.items()}
        moved = {"dec": _unit(lat["dec"][pp] + sd * z["dec"]),
                 "enc": _unit(lat["enc"][pp] + sd * z["enc"]),
                 "enc_gain": lat["enc_gain"][pp] * np.exp(0.1 * z["enc_gain"]),
                 "theta": lat["theta"][pp] * np.exp(0.15 * z["theta"]),
                 "bias": lat["bias"][pp] + 0.1 * z["bias"]}
        for key in wide:
            mask = child[:, None] if new[key].ndim == 2 else child
            wide[key][rows] = np.where(mask, moved[key], new[key])
    return narrow, _sae(wide, LAYER_A, "wide"), parent


def cached_family(n_narrow: int, n_wide: int, seed: int) -> tuple[Path, Path, Path]:
    from saematch.atomic import write_npz
    from saematch.sae import save_sae

    base = CACHE / f"cross_{n_narrow}_{n_wide}_{seed}"
    paths = base.with_name(base.name + "_narrow.npz"), base.with_name(base.name + "_wide.npz"), \
        base.with_name(base.name + "_truth.npz")
    if not all(p.exists() for p in paths):
        CACHE.mkdir(parents=True, exist_ok=True)
        narrow, wide, parent = make_family(n_narrow, n_wide, seed)
        save_sae(paths[0], narrow)
        save_sae(paths[1], wide)
        write_npz(paths[2], parent=parent)
    return paths


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def run_case(case: str, n_narrow: int, n_wide: int, seed: int, block: int, device: str) -> dict:
    """Body of one measured subprocess; prints one RESULT line (``generate``: only fills the
    cache, in a process of its own, so the measured ones do not inherit its peak RSS)."""
    if case == "generate":
        cached_family(n_narrow, n_wide, seed)
        print("RESULT {}")
        return {}
    import torch

    from saematch.features import Variant, variant_vectors
    from saematch.sae import load_sae

    p_narrow, p_wide, p_truth = cached_family(n_narrow, n_wide, seed)
    narrow, wide = load_sae(p_narrow), load_sae(p_wide)
    variant = Variant("folded")
    out: dict = {"case": case, "n_narrow": n_narrow, "n_wide": n_wide,
                 "threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    if case == "gemm":
        from saematch.costs import cost_blocks

        N, W = variant_vectors(narrow, wide, variant, rectangular=True)
        t1 = time.perf_counter()
        for _, c in cost_blocks(W, N, block, device):
            del c
        out.update(vectors=t1 - t0, gemm=time.perf_counter() - t1)
    elif case == "links":
        from saematch.assign import Assignment, top1
        from saematch.costs import nearest
        from saematch.crosswidth import cross_links, top1_null

        N, W = variant_vectors(narrow, wide, variant, rectangular=True)
        t1 = time.perf_counter()
        parents = top1(*nearest(W, N, block, device), n_b=len(N))
        t2 = time.perf_counter()
        del N, W
        top1_null(wide, narrow, variant, alpha=ALPHA, seed=0, block=block, device=device)
        t3 = time.perf_counter()
        perm = np.random.default_rng(0).permutation(n_wide)[:n_narrow]
        placeholder = Assignment(perm=perm, match_cost=np.zeros(n_narrow), solver="placeholder",
                                 kind="injective", n_b=n_wide)
        with np.load(p_truth) as t:
            truth = t["parent"]
        _, s = cross_links(narrow, wide, placeholder, parents, variant, alpha=ALPHA, block=block,
                           device=device, true_parent=truth)
        t4 = time.perf_counter()
        out.update(vectors=t1 - t0, parent_map=t2 - t1, null=t3 - t2,  # null: also in cross_links
                   cross_links=t4 - t3, planted_links_recovered=s["planted_links_recovered"],
                   planted_false_links=s["planted_false_links"], split_factor=s["split_factor"],
                   planted_split_factor=s["planted_split_factor"])
    else:
        from saematch.assign import assign_dense
        from saematch.costs import cost_matrix

        N, W = variant_vectors(narrow, wide, variant, rectangular=True)
        t1 = time.perf_counter()
        cost = cost_matrix(N, W, block=block, device=device)
        t2 = time.perf_counter()
        res = assign_dense(cost)
        out.update(vectors=t1 - t0, cost=t2 - t1, lap=time.perf_counter() - t2, kind=res.kind)
    out.update(wall=time.perf_counter() - t0, peak_gib=_peak_gib())
    print("RESULT " + json.dumps(out), flush=True)
    return out


def subprocess_case(case: str, n_narrow: int, n_wide: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--case", case, "--narrow", str(n_narrow), "--wide",
           str(n_wide), "--seed", str(args.seed), "--block", str(args.block), "--device",
           args.device]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{case} {n_narrow}x{n_wide} failed:\n{proc.stderr[-4000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--narrow", type=int, default=16384)
    p.add_argument("--wide", type=int, default=65536)
    p.add_argument("--dense", nargs="*", default=["2048x8192", "4096x16384"],
                   help="narrow x wide sizes for the dense rectangular LAP")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--block", type=int, default=4096)
    p.add_argument("--device", default="auto")
    p.add_argument("--case", choices=["generate", "gemm", "links", "dense"],
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        run_case(args.case, args.narrow, args.wide, args.seed, args.block, args.device)
        return
    rows = []
    for case, n, m in [("gemm", args.narrow, args.wide), ("links", args.narrow, args.wide),
                       *(("dense", *map(int, s.split("x"))) for s in args.dense)]:
        t0 = time.perf_counter()
        subprocess_case("generate", n, m, args)
        print(f"{n} x {m}: SAEs ready ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        rows.append(subprocess_case(case, n, m, args))
        print(json.dumps(rows[-1]), file=sys.stderr)
    load = os.getloadavg()
    lines = ["| case | narrow x wide | what | seconds | peak GiB |", "|---|---|---|---|---|"]
    for r in rows:
        size = f"{r['n_narrow']} x {r['n_wide']}"
        parts = {k: v for k, v in r.items() if k in ("vectors", "gemm", "parent_map", "null",
                                                      "cross_links", "cost", "lap")}
        what = ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
        wall = r["wall"] - r.get("null", 0)  # the standalone null is not part of the job
        lines.append(f"| {r['case']} | {size} | {what} | {wall:.1f} | {r['peak_gib']:.2f} |")
    links = next((r for r in rows if r["case"] == "links"), None)
    md = "\n".join(lines) + "\n\n" + ("seconds: the job's wall time (for links: vectors + "
                                       "parent_map + cross_links; null is inside cross_links)."
                                       "\n")
    if links:
        md += (f"Planted truth at {links['n_narrow']} x {links['n_wide']}: links recovered "
               f"{links['planted_links_recovered']:.3f}, false links among new wide features "
               f"{links['planted_false_links']:.3f}, split factor {links['split_factor']:.2f} "
               f"(planted {links['planted_split_factor']:.2f}).\n")
    md += (f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
           f"torch threads {rows[0]['threads']}, device={args.device}, block={args.block}; load "
           f"average at end {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}.\n")
    print(md)
    out = ROOT / "benchmarks" / "out" / "bench_crosswidth.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)


if __name__ == "__main__":
    main()
