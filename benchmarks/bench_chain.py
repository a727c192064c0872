"""Benchmark: ``saematch.match_chain`` over a family of SAEs, one pair at a time against two.

A script, not a test. It plants a family of ``--layers`` JumpReLU SAEs of ``--n`` features
(``saematch.synthetic.planted_layer``; d_model 2304 as Gemma Scope, so the folded feature vectors
have D = 4609; half the features persist from layer to layer by default) and matches each layer
to the next with ``match_chain(saes, workers=w)`` for each ``--workers`` value, each in a fresh
process ("s": the call, numba's import and kernel loading included, the same in every row; the
SAEs are loaded before). "cores busy" is
the process's CPU time over its wall time: with one worker the second core idles while a pair's
sparse solve runs; with two, the other pair's GEMM passes fill it.

    python benchmarks/bench_chain.py --n 16384 --layers 4 --workers 1 2

Prints a markdown table and, per workers value, its speed relative to the first value's
(fastest run of each; repeat values to see the spread).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / "out" / "cache"
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench_assign import _cpu, _gib, _peak_rss_bytes, read_result  # noqa: E402


def family_paths(n: int, layers: int, d_model: int, survive: float, seed: int) -> list[Path]:
    """The family's ``params.npz`` files, planted once and cached."""
    from saematch.sae import save_sae
    from saematch.synthetic import PlantedSpec, planted_layer

    spec = PlantedSpec(n_features=n, d_model=d_model, seed=seed, survive=survive, noise=0.5)
    paths = [CACHE / f"chain_{n}_{d_model}_{survive}_{seed}_layer{t}.npz" for t in range(layers)]
    CACHE.mkdir(parents=True, exist_ok=True)
    for t, path in enumerate(paths):
        if not path.exists():
            save_sae(path, planted_layer(spec, t)[0])
    return paths


def run_case(paths: list[str], workers: int, solver: str) -> None:
    """Body of one measured process: prints one RESULT line."""
    t0 = time.perf_counter()
    from saematch import load_sae, match_chain

    saes = [load_sae(p) for p in paths]
    t1, c1 = time.perf_counter(), os.times()
    chain = match_chain(saes, workers=workers, solver=solver)
    t2, c2 = time.perf_counter(), os.times()
    cpu = (c2.user + c2.system) - (c1.user + c1.system)
    perms = b"".join(res.perm.tobytes() for res in chain)
    print("RESULT " + json.dumps({
        "workers": workers, "wall": t2 - t1, "load": t1 - t0, "cpu": cpu,
        "peak_rss": _peak_rss_bytes(), "solvers": sorted({res.solver for res in chain}),
        "perms_sha": hashlib.sha1(perms).hexdigest()[:16]}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=16384)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=2304)
    p.add_argument("--survive", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--solver", default="auto", choices=["auto", "dense", "certified"])
    p.add_argument("--case", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        run_case(args.case, args.workers[0], args.solver)
        return

    paths = family_paths(args.n, args.layers, args.d_model, args.survive, args.seed)
    rows = []
    for workers in args.workers:
        proc = subprocess.run([sys.executable, __file__, "--workers", str(workers), "--solver",
                               args.solver, "--case", *map(str, paths)],
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"workers={workers} failed:\n{proc.stderr[-3000:]}")
        rows.append(read_result(proc.stdout))
        print(f"workers={workers}: {rows[-1]['wall']:.1f} s", file=sys.stderr)
    out = ["| workers | s | cores busy | peak GiB | solver | same perms |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['workers']} | {r['wall']:.1f} | {r['cpu'] / r['wall']:.2f} | "
                   f"{_gib(r['peak_rss'])} | {', '.join(r['solvers'])} | "
                   f"{'yes' if r['perms_sha'] == rows[0]['perms_sha'] else 'NO'} |")
    best = {w: min(r["wall"] for r in rows if r["workers"] == w) for w in args.workers}
    out.append("")
    out += [f"- workers={w}: {best[args.workers[0]] / best[w]:.2f}x the speed of workers="
            f"{args.workers[0]} (fastest run of each)" for w in best if w != args.workers[0]]
    out.append(f"\n{args.layers - 1} pairs of {args.n} features, d_model {args.d_model}, survive "
               f"{args.survive}; machine: {_cpu()}, {os.cpu_count()} CPUs; loading the SAEs "
               "(not in s) took " + ", ".join(f"{r['load']:.1f}" for r in rows) + " s.")
    print("\n".join(out))


if __name__ == "__main__":
    main()
