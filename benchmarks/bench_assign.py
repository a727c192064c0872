"""Benchmark: saematch's exact LAP methods against the peers a user would pick, one run.

A script, not a test. For each size it builds two synthetic JumpReLU SAEs (``--generator``):

- ``gemma``: shaped like Gemma Scope (d_model 2304; feature vector = folded [decoder, encoder,
  b_enc], D = 4609): half of layer B's features are noisy counterparts of layer-A features, the
  rest are new, thresholds grow with depth;
- ``persist``: like the deep layers of a real family: 85% of the features persist with drift,
  d_model 640 (D = 1281, Gemma 3 270M's size).

Methods, each in a fresh subprocess so that its peak RSS is its own (inputs A and B included):

- ``gemm``: one plain blockwise GEMM pass over all n x n pairs (``saematch.gemm.gemm_blocks``,
  nothing kept): the floor of any exact method that looks at every pair;
- ``certified``: saematch's certified sparse solver (candidates + sparse LAP + certificate);
- ``dense``: saematch's dense path (cost matrix float32 blockwise + LAPJV in float64), what
  ``auto`` runs up to ``assign.dense_max_features``;
- peers: ``scipy`` (``scipy.optimize.linear_sum_assignment``) and ``lapjv`` (PyPI ``lap``,
  ``lap.lapjv``) on the float64 cost matrix a user builds with numpy (``_user_cost``), and
  ``lapmod`` (``lap.lapmod`` on the candidate graph certified builds, k = ``--k`` or
  ``default_k``; exact only if the
  graph happens to hold the optimum, which nothing proves: the table says whether its
  permutation is the same).

    python benchmarks/bench_assign.py --sizes 8192 16384 --generator gemma persist
    python benchmarks/bench_assign.py --sizes 65536 --methods gemm certified
    python benchmarks/bench_assign.py --sizes 8192 --generator persist \
        --methods certified lapjv --calls 2 --repeat 7

``--screen`` picks the low-precision screen of saematch's passes (``auto``: bf16 where the CPU
multiplies bf16, else int8; ``bf16``, ``int8`` or ``off``); on one CPU an AVX2-only one can be
emulated by prefixing ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 NUMBA_CPU_NAME=haswell``.

``--repeat R`` runs every method's process R times, the methods taking turns, and reports
medians with their ranges, and in how many of the R turns saematch was the faster: a first
call in a fresh process moves by up to 2x from run to run (fresh memory, imports).

Prints the markdown table (times, ratios to the GEMM pass and to the best peer) and writes it
to benchmarks/out/bench_assign.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
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
GENERATORS = {"gemma": dict(d=D_MODEL, noise=0.5, survive=0.5),
              "persist": dict(d=640, noise=0.5, survive=0.85)}
PEERS = ("scipy", "lapjv", "lapmod")
METHODS = ("gemm", "certified", "dense") + PEERS


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
    from saematch.features import feature_vectors

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


def cached_pair(n: int, seed: int = 0, generator: str = "gemma") -> tuple[Path, Path]:
    CACHE.mkdir(parents=True, exist_ok=True)
    tag = "" if generator == "gemma" else f"{generator}_"
    pa, pb = CACHE / f"A_{tag}{n}_{seed}.npy", CACHE / f"B_{tag}{n}_{seed}.npy"
    if not (pa.exists() and pb.exists()):
        A, B, _ = make_pair(n, seed, **GENERATORS[generator])
        np.save(pa, A)
        np.save(pb, B)
    return pa, pb


# ------------------------------------------------------------------------------- one case
def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _gemm_pass(A: np.ndarray, B: np.ndarray, block: int, device: str) -> dict:
    from saematch.gemm import gemm_blocks

    total = 0.0
    for _, _, G in gemm_blocks(A, B, block=block, device=device):
        total += float(G[0, 0])  # touch the block so nothing is optimised away
    return {"checksum": total}


def _user_cost(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """The float64 cost matrix a user of scipy or ``lap`` builds with numpy: one float32 GEMM,
    the norms added in place, then float64 (persist 8192, EPYC: 0.8-1.1 s, against 1.6-2.6 s
    for saematch's ``cost_matrix`` and a float64 copy; rounding differs from saematch's in the last
    float32 ulp, and the table says whether the permutation is the same)."""
    C = A @ B.T
    C *= -2.0
    C += np.einsum("ij,ij->i", A, A)[:, None]
    C += np.einsum("ij,ij->i", B, B)[None, :]
    return C.astype(np.float64)


def _call(method: str, A: np.ndarray, B: np.ndarray, k: int | None, time_limit: float | None,
          block: int, device: str, screen: str = "auto") -> tuple[np.ndarray | None, dict]:
    """One timed call of a method: its permutation (None for ``gemm``) and its details."""
    t0 = time.perf_counter()
    extra: dict = {}
    perm = None
    if method == "gemm":
        extra = _gemm_pass(A, B, block, device)
    elif method == "certified":
        from saematch.certified import certified_assign

        res = certified_assign(A, B, k=k, block=block, device=device, time_limit=time_limit,
                               screen=screen)
        perm, extra = res.perm, {key: (float(v) if isinstance(v, (int, float, np.number))
                                       else str(v)) for key, v in res.info.items()}
        extra.update(status=res.status, gap=float(res.gap))
    elif method == "lapmod":
        import lap

        from saematch.certified import candidate_graph, default_k

        kk = default_k(len(A), len(B), device, screen) if k is None else k
        g = candidate_graph(A, B, kk, block=block, device=device, screen=screen).costs
        extra["t_candidates"] = time.perf_counter() - t0
        _, x, _ = lap.lapmod(len(A), g.data.astype(np.float64), g.indptr.astype(np.int32),
                             g.indices.astype(np.int32))
        perm = np.asarray(x, np.int64)
    elif method == "dense":
        from saematch.assign import assign_dense
        from saematch.costs import cost_matrix

        cost = cost_matrix(A, B, block=block, device=device)
        extra["t_cost"] = time.perf_counter() - t0
        perm = assign_dense(cost).perm
        del cost
    else:
        cost = _user_cost(A, B)
        extra["t_cost"] = time.perf_counter() - t0
        if method == "scipy":
            from scipy.optimize import linear_sum_assignment

            perm = linear_sum_assignment(cost)[1]
        else:  # lapjv
            import lap

            perm = lap.lapjv(cost)[1]
        del cost
    return perm, extra


def run_case(method: str, n: int, seed: int, generator: str, device: str, k: int | None,
             time_limit: float | None, block: int, calls: int = 1, screen: str = "auto") -> dict:
    """Body of one measured subprocess; prints one JSON line. ``wall``: the first call, imports
    and one-off starts (numba's kernel loading) included; with ``calls`` > 1 also ``wall_again``,
    the fastest later call in the same process (details are the last call's)."""
    sys.path.insert(0, str(ROOT))
    import torch

    pa, pb = cached_pair(n, seed, generator)
    A, B = np.load(pa), np.load(pb)
    base_rss = _peak_rss_bytes()
    walls = []
    for _ in range(calls):
        t0 = time.perf_counter()
        perm, extra = _call(method, A, B, k, time_limit, block, device, screen)
        walls.append(time.perf_counter() - t0)
    again = {"wall_again": min(walls[1:])} if calls > 1 else {}
    out = {"method": method, "n": n, "generator": generator, "wall": walls[0], **again,
           "peak_rss": _peak_rss_bytes(), "inputs_rss": base_rss,
           "threads": torch.get_num_threads(), "t_call": walls[-1], **extra}
    if perm is not None:
        perm = np.asarray(perm, np.int64)
        diff = A - B[perm]  # objective in float64 from the vectors: one yardstick for all
        out["objective"] = float(np.einsum("ij,ij->", diff, diff, dtype=np.float64))
        out["perm_sha"] = hashlib.sha1(perm.tobytes()).hexdigest()[:16]
    print("RESULT " + json.dumps(out), flush=True)
    return out


def subprocess_case(args: argparse.Namespace, method: str, n: int, generator: str) -> dict:
    cmd = [sys.executable, __file__, "--case", method, "--sizes", str(n), "--seed", str(args.seed),
           "--generator", generator, "--device", args.device,
           "--block", str(args.block), "--calls", str(args.calls), "--screen", args.screen]
    if args.k is not None:
        cmd += ["--k", str(args.k)]
    if args.time_limit is not None:
        cmd += ["--time-limit", str(args.time_limit)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        return {"method": method, "n": n, "error": f"rc={proc.returncode}",
                "wall": time.perf_counter() - t0}
    return read_result(proc.stdout)


def read_result(stdout: str) -> dict:
    """The last ``RESULT {json}`` line a measured process printed."""
    line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


# ---------------------------------------------------------------------------------- table
def _gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def _detail(r: dict) -> str:
    if r["method"] == "certified":
        screen = r.get("screen", "bf16")  # results from before int8 screened only in bf16
        passes = f"{r['passes']:.2f} passes" + (
            "" if screen == "off" else f" + {r.get('screen_passes', 0.0):.2f} in {screen}")
        return (f"{r['status']}, gap {r['gap']:.1e}, {int(r['rounds'])} rounds, {passes}, "
                f"cand {r['t_candidates']:.1f} + solve "
                f"{r['t_solve']:.1f} + cert {r['t_certify']:.1f} s")
    if "t_cost" in r:
        return f"cost {r['t_cost']:.1f} + LAP {r['t_call'] - r['t_cost']:.1f} s"
    if "t_candidates" in r:
        return (f"candidates {r['t_candidates']:.1f} + lapmod "
                f"{r['t_call'] - r['t_candidates']:.1f} s")
    return ""


def aggregate(runs: list[dict]) -> list[dict]:
    """One result per (generator, n, method) from ``--repeat`` runs: the run with the median
    first call (lower median; its details), with every run's first and later calls in
    ``wall_runs`` and ``wall_again_runs``, in turn order, so that the methods' runs pair up. A
    method that failed in any run is reported failed."""
    groups: dict = {}
    for r in runs:
        groups.setdefault((r.get("generator"), r["n"], r["method"]), []).append(r)
    out = []
    for group in groups.values():
        failed = [r for r in group if "error" in r]
        if failed:
            out.append(failed[0])
            continue
        mid = dict(sorted(group, key=lambda r: r["wall"])[(len(group) - 1) // 2])
        mid["wall_runs"] = [r["wall"] for r in group]
        if all("wall_again" in r for r in group):
            mid["wall_again_runs"] = [r["wall_again"] for r in group]
            mid["wall_again"] = statistics.median_low(mid["wall_again_runs"])
        out.append(mid)
    return out


def _cell(r: dict, wall: str) -> str:
    """A time, with the range of the runs where there were several."""
    if wall not in r:
        return "-"
    runs = r.get(wall + "_runs", [])
    spread = f" ({min(runs):.1f}–{max(runs):.1f})" if len(runs) > 1 else ""
    return f"{r[wall]:.1f}{spread}"


def _best_objective(group) -> float | None:
    """The smallest objective any method of one (generator, n) group found."""
    return min((r["objective"] for r in group if "objective" in r), default=None)


def table(results: list[dict]) -> str:
    """One row per (generator, n, method); ratios to the GEMM pass and the reference permutation
    (certified, else dense). "s": the first call in a fresh process; "again s": the fastest
    later call in that process (``--calls``); the details are of the last call. With several
    runs (:func:`aggregate`) medians, and the runs' range in brackets."""
    cols = ["generator", "n", "method", "s", "again s", "x GEMM pass", "peak GiB", "same perm",
            "objective - best (rel)", "detail"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for key in dict.fromkeys((r["generator"], r["n"]) for r in results if "error" not in r):
        group = [r for r in results if (r.get("generator"), r["n"]) == key]
        gemm = next((r["wall"] for r in group if r["method"] == "gemm"), None)
        ref = next((r for m in ("certified", "dense") for r in group
                    if r["method"] == m and "perm_sha" in r), None)
        best = _best_objective(group)
        for r in group:
            if "error" in r:
                lines.append(f"| {key[0]} | {key[1]} | {r['method']} | failed ({r['error']}) |"
                             + " |" * 6)
                continue
            ratio = f"{r['wall'] / gemm:.2f}" if gemm else "-"
            same = "-" if "perm_sha" not in r or ref is None else \
                ("yes" if r["perm_sha"] == ref["perm_sha"] else "no")
            rel = "-" if best is None or "objective" not in r else \
                f"{(r['objective'] - best) / abs(best):.1e}"
            lines.append(f"| {key[0]} | {key[1]} | {r['method']} | {_cell(r, 'wall')} | "
                         f"{_cell(r, 'wall_again')} | {ratio} | {_gib(r['peak_rss'])} | {same} | "
                         f"{rel} | {_detail(r)} |")
    return "\n".join(lines)


def ratios(results: list[dict]) -> list[str]:
    """Per (generator, n): saematch's fastest exact method against the fastest peer that found
    the optimum (a peer that returned a worse objective, like lapmod on a too-thin graph, is no
    alternative at any speed)."""
    out = []
    for key in dict.fromkeys((r["generator"], r["n"]) for r in results if "error" not in r):
        group = {r["method"]: r for r in results
                 if (r.get("generator"), r["n"]) == key and "error" not in r}
        best = _best_objective(group.values())
        exact = {m: r for m, r in group.items() if best is not None
                 and r.get("objective", float("inf")) - best <= 1e-9 * abs(best)}
        ours = [exact[m] for m in ("certified", "dense") if m in exact]
        peers = [exact[m] for m in PEERS if m in exact]
        out += [f"{key[0]} n={key[1]}: {m} not optimal (objective {group[m]['objective']:.6g} "
                f"vs {best:.6g}), left out of the comparison"
                for m in PEERS if m in group and m not in exact and "objective" in group[m]]
        for wall, what in (("wall", "first call"), ("wall_again", "again")):
            ours_w = [r for r in ours if wall in r]
            peers_w = [r for r in peers if wall in r]
            if ours_w and peers_w:
                o = min(ours_w, key=lambda r: r[wall])
                p = min(peers_w, key=lambda r: r[wall])
                o_runs, p_runs = o.get(wall + "_runs", []), p.get(wall + "_runs", [])
                turns = ""
                if len(o_runs) > 1 and len(o_runs) == len(p_runs):
                    faster = sum(a < b for a, b in zip(o_runs, p_runs))
                    turns = (f" (medians of {len(o_runs)} runs; saematch faster in {faster} of "
                             f"{len(o_runs)} turns)")
                out.append(f"{key[0]} n={key[1]}, {what}: saematch {o['method']} {o[wall]:.1f} s "
                           f"vs best peer {p['method']} {p[wall]:.1f} s: "
                           f"{p[wall] / o[wall]:.2f}x{turns}")
        if "gemm" in group and "certified" in group:
            out.append(f"{key[0]} n={key[1]}: certified / one GEMM pass = "
                       f"{group['certified']['wall'] / group['gemm']['wall']:.2f}")
    return out


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384])
    p.add_argument("--generator", nargs="+", choices=list(GENERATORS), default=["gemma"])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--dense-max", type=int, default=32768,
                   help="largest n for the dense methods (n^2 float64 is 8 GiB at 32k)")
    p.add_argument("--scipy-max", type=int, default=8192,
                   help="largest n for scipy (its solve took 208 s at 8k, 1544 s at 16k)")
    p.add_argument("--device", default="auto")
    p.add_argument("--k", type=int, default=None,
                   help="candidates per list (default: saematch.certified.default_k)")
    p.add_argument("--block", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit", type=float, default=None)
    p.add_argument("--calls", type=int, default=1,
                   help="calls per method in its process: from 2 on the table also shows the "
                        "fastest later call, without the one-off starts")
    p.add_argument("--repeat", type=int, default=1,
                   help="processes per method, the methods taking turns: medians and ranges")
    p.add_argument("--screen", choices=["auto", "bf16", "int8", "off"], default="auto",
                   help="the low-precision screen of saematch's passes (certified, lapmod)")
    p.add_argument("--case", choices=METHODS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.repeat < 1:
        p.error(f"--repeat must be at least 1, got {args.repeat}")
    if args.case:
        run_case(args.case, args.sizes[0], args.seed, args.generator[0], args.device, args.k,
                 args.time_limit, args.block, args.calls, args.screen)
        return

    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    for gen in args.generator:
        for n in args.sizes:
            t0 = time.perf_counter()
            made = subprocess.run([sys.executable, "-c",
                                   f"import sys; sys.path[:0] = [{str(ROOT)!r}, "
                                   f"{str(ROOT / 'benchmarks')!r}]; import bench_assign as b; "
                                   f"b.cached_pair({n}, {args.seed}, {gen!r})"],
                                  capture_output=True, text=True)
            if made.returncode:
                sys.exit(f"generating {gen} n={n} failed:\n{made.stderr[-3000:]}")
            print(f"{gen} n={n}: vectors ready ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr)
            methods = [m for m in args.methods
                       if not ((m in ("dense", "scipy", "lapjv") and n > args.dense_max)
                               or (m == "scipy" and n > args.scipy_max))]
            for turn in range(args.repeat):
                for method in methods:
                    r = subprocess_case(args, method, n, gen)
                    r.setdefault("generator", gen)
                    r["turn"] = turn
                    print(f"{gen} n={n}: {method} {r.get('wall', 0):.1f} s", file=sys.stderr)
                    results.append(r)
    load = os.getloadavg()
    note = (f"Machine: {_cpu()}, {os.cpu_count()} CPUs, device={args.device}, "
            f"k={args.k or 'default_k'}, block={args.block}, seed={args.seed}, "
            f"screen={args.screen}; load average at end "
            f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}. Peak = peak RSS of the method's own "
            "process, inputs A and B (n x D float32 each) included. Objective: "
            "sum ||a_i - b_perm(i)||^2 in float64 from the vectors, relative to the best of the "
            "row group.")
    if args.repeat > 1:
        note += (f" Each method ran in {args.repeat} processes, the methods taking turns; times "
                 "are medians, the runs' range in brackets.")
    summary = aggregate(results)
    md = table(summary) + "\n\n" + "\n".join(f"- {x}" for x in ratios(summary)) + \
        "\n\n" + note + "\n"
    print(md)
    (OUT / "bench_assign.md").write_text(md)
    (OUT / "bench_assign.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
