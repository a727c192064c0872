"""Benchmark: certified sparse LAP (saematch.certified) against dense scipy, Gemma-Scope-shaped.

A script, not a test. For each width it builds two synthetic JumpReLU SAEs shaped like Gemma
Scope (d_model 2304; feature vector = folded [decoder, encoder, b_enc], D = 4609): about half of
layer B's features are noisy counterparts of layer-A features, the rest are new, thresholds grow
with depth. Each solver runs in a fresh subprocess so that its peak RSS is its own; vectors are
generated once per width (in another subprocess) and cached as .npy under benchmarks/out/cache/.

    python benchmarks/bench_assign.py                       # 4k, 8k, 16k (+dense) and 65k
    python benchmarks/bench_assign.py --sizes 4096 8192 --skip-dense

Writes the markdown table to stdout and to benchmarks/out/bench_assign.md.
"""
from __future__ import annotations

import argparse
import hashlib
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
OUT = ROOT / "benchmarks" / "out"
CACHE = OUT / "cache"
D_MODEL = 2304
LAYER_A = 12


# ----------------------------------------------------------------------------------- data
def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _latents(rng: np.random.Generator, n: int, d: int) -> dict[str, np.ndarray]:
    dec = _unit(rng.standard_normal((n, d), dtype=np.float32))
    enc = _unit(dec + 0.6 * rng.standard_normal((n, d), dtype=np.float32) / np.sqrt(d))
    return {"dec": dec, "enc": enc,
            "enc_gain": rng.lognormal(0.0, 0.3, n).astype(np.float32),
            "theta": rng.lognormal(0.0, 0.5, n).astype(np.float32),
            "bias": rng.uniform(-1.2, -0.2, n).astype(np.float32)}


def _sae(lat: dict[str, np.ndarray], layer: int, name: str):
    from saematch.sae import SAE

    theta = (lat["theta"] * 1.08 ** layer).astype(np.float32)
    d = lat["dec"].shape[1]
    return SAE(W_enc=np.ascontiguousarray((lat["enc"] * lat["enc_gain"][:, None]).T),
               b_enc=(lat["bias"] * theta).astype(np.float32),
               W_dec=lat["dec"], b_dec=np.zeros(d, np.float32), threshold=theta,
               source=f"bench:{name}")


def make_pair(n: int, seed: int = 0, d: int = D_MODEL, noise: float = 0.5,
              survive: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature vectors (A, B) of layers 12 and 13 and ``origin`` (layer-A index or -1)."""
    try:  # the helper moved from saematch.costs to saematch.features during a refactor
        from saematch.features import feature_vectors
    except ImportError:
        from saematch.costs import feature_vectors

    rng = np.random.default_rng([seed, n, d])
    lat_a = _latents(rng, n, d)
    A = feature_vectors(_sae(lat_a, LAYER_A, "A"))
    alive = rng.random(n) < survive
    new = _latents(rng, n, d)
    sd = noise / np.sqrt(d)
    lat_b = {
        "dec": _unit(lat_a["dec"] + sd * rng.standard_normal((n, d), dtype=np.float32)),
        "enc": _unit(lat_a["enc"] + sd * rng.standard_normal((n, d), dtype=np.float32)),
        "enc_gain": lat_a["enc_gain"] * np.exp(0.1 * rng.standard_normal(n)).astype(np.float32),
        "theta": lat_a["theta"] * np.exp(0.15 * rng.standard_normal(n)).astype(np.float32),
        "bias": lat_a["bias"] + 0.1 * rng.standard_normal(n).astype(np.float32),
    }
    del lat_a
    for key, val in lat_b.items():
        mask = alive[:, None] if val.ndim == 2 else alive
        lat_b[key] = np.where(mask, val, new[key])
    del new
    order = rng.permutation(n)
    lat_b = {k: np.ascontiguousarray(v[order]) for k, v in lat_b.items()}
    B = feature_vectors(_sae(lat_b, LAYER_A + 1, "B"))
    origin = np.where(alive[order], order, -1)
    return A, B, origin


def cached_pair(n: int, seed: int = 0) -> tuple[Path, Path]:
    CACHE.mkdir(parents=True, exist_ok=True)
    pa, pb = CACHE / f"A_{n}_{seed}.npy", CACHE / f"B_{n}_{seed}.npy"
    if not (pa.exists() and pb.exists()):
        A, B, _ = make_pair(n, seed)
        np.save(pa, A)
        np.save(pb, B)
    return pa, pb


# ------------------------------------------------------------------------------- one case
def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def run_case(solver: str, n: int, seed: int, device: str, k: int, time_limit: float | None,
             block: int) -> dict:
    """Body of one measured subprocess; prints one JSON line."""
    sys.path.insert(0, str(ROOT))
    import torch

    pa, pb = CACHE / f"A_{n}_{seed}.npy", CACHE / f"B_{n}_{seed}.npy"
    A, B = np.load(pa), np.load(pb)
    base_rss = _peak_rss_bytes()
    t0 = time.perf_counter()
    if solver == "dense":
        from saematch.assign import assign_dense
        from saematch.costs import cost_matrix

        cost = cost_matrix(A, B, block=block, device=device)
        t_cost = time.perf_counter() - t0
        res = assign_dense(cost)
        del cost
        extra = {"t_cost": t_cost}
    else:
        from saematch.certified import certified_assign

        res = certified_assign(A, B, k=k, block=block, device=device, time_limit=time_limit)
        extra = {key: (float(v) if isinstance(v, (int, float, np.number)) else str(v))
                 for key, v in res.info.items()}
    wall = time.perf_counter() - t0
    out = {"solver": solver, "n": n, "wall": wall, "objective": res.objective,
           "status": res.status, "gap": float(res.gap), "peak_rss": _peak_rss_bytes(),
           "inputs_rss": base_rss,
           "perm_sha": hashlib.sha1(res.perm.astype(np.int64).tobytes()).hexdigest()[:16],
           "threads": torch.get_num_threads(), **extra}
    print("RESULT " + json.dumps(out), flush=True)
    return out


def subprocess_case(args: argparse.Namespace, solver: str, n: int) -> dict:
    cmd = [sys.executable, __file__, "--case", solver, "--sizes", str(n), "--seed", str(args.seed),
           "--device", args.device, "--k", str(args.k), "--block", str(args.block)]
    if args.time_limit is not None:
        cmd += ["--time-limit", str(args.time_limit)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        return {"solver": solver, "n": n, "error": f"rc={proc.returncode}",
                "wall": time.perf_counter() - t0}
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


# ---------------------------------------------------------------------------------- table
def _gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def table(rows: list[tuple[int, dict, dict | None]]) -> str:
    cols = ["n", "certified s", "certified peak GiB", "status", "gap", "rounds", "GEMM passes",
            "edges", "violations added", "dense s (cost + LAP)", "dense peak GiB",
            "objective diff (rel)", "same perm", "speedup"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for n, c, d in rows:
        if "error" in c:
            cert = [str(n), f"failed ({c['error']})"] + ["-"] * 7
        else:
            cert = [str(n), f"{c['wall']:.1f}", _gib(c["peak_rss"]), c["status"],
                    f"{c['gap']:.1e}", str(int(c.get("rounds", 0))),
                    f"{float(c.get('passes', 0)):.2f}", str(int(c.get("edges", 0))),
                    str(int(c.get("violations_added", 0)))]
        if d is None:
            dense = ["-"] * 5
        elif "error" in d:
            dense = [f"failed ({d['error']})"] + ["-"] * 4
        elif "error" in c:
            dense = [f"{d['wall']:.1f}", _gib(d["peak_rss"])] + ["-"] * 3
        else:
            diff = (c["objective"] - d["objective"]) / abs(d["objective"])
            dense = [f"{d['wall']:.1f} ({d['t_cost']:.1f} + {d['wall'] - d['t_cost']:.1f})",
                     _gib(d["peak_rss"]), f"{diff:+.1e}",
                     "yes" if c["perm_sha"] == d["perm_sha"] else "no",
                     f"{d['wall'] / c['wall']:.1f}x"]
        lines.append("| " + " | ".join(cert + dense) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384, 65536])
    p.add_argument("--dense-max", type=int, default=16384,
                   help="largest n for which dense scipy also runs (65k needs 34 GB)")
    p.add_argument("--skip-dense", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--block", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit", type=float, default=None)
    p.add_argument("--case", choices=["dense", "certified"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        run_case(args.case, args.sizes[0], args.seed, args.device, args.k, args.time_limit,
                 args.block)
        return

    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        t0 = time.perf_counter()
        gen = subprocess.run([sys.executable, "-c",
                              f"import sys; sys.path[:0] = [{str(ROOT)!r}, "
                              f"{str(ROOT / 'benchmarks')!r}]; import bench_assign as b; "
                              f"b.cached_pair({n}, {args.seed})"], capture_output=True, text=True)
        if gen.returncode:
            sys.exit(f"generating n={n} failed:\n{gen.stderr[-3000:]}")
        print(f"n={n}: vectors ready ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        c = subprocess_case(args, "certified", n)
        print(f"n={n}: certified {c}", file=sys.stderr)
        d = None
        if not args.skip_dense and n <= args.dense_max:
            d = subprocess_case(args, "dense", n)
            print(f"n={n}: dense {d}", file=sys.stderr)
        rows.append((n, c, d))
    load = os.getloadavg()
    note = (f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"device={args.device}, k={args.k}, block={args.block}, seed={args.seed}; "
            f"load average at end {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} (above the "
            "benchmark's own ~2, other jobs slowed it). Peak = peak RSS of the solver's own "
            "process, inputs A and B (n x 4609 float32 each) included.")
    md = table(rows) + "\n\n" + note + "\n"
    print(md)
    (OUT / "bench_assign.md").write_text(md)


if __name__ == "__main__":
    main()
