"""Maps of layer-A features to layer-B features, and their HDF5 artefact.

``perm[i] = j`` means feature i of layer A is matched to feature j of layer B. Codes of layer A
are carried to layer B's order by ``f_B[..., perm] = f_A`` (see :func:`permute_codes`).

Three kinds of map share that form (``Assignment.kind``, recorded and checked on read):

- ``permutation``: n_A = n_B, every feature of B is hit once (the LAP of two layers, identity);
- ``injective``: n_A <= n_B, distinct partners (the rectangular LAP of a narrow SAE into a wide
  one); the B features nobody maps to receive no code;
- ``many_to_one``: any partner in B, several A features may share one (top-1 maps: Feature Flow's
  nearest partner, the parent map of a wide SAE onto a narrow one); their codes add up.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from .atomic import atomic_path
from .errors import SAEMatchError

KINDS = ("permutation", "injective", "many_to_one")
DENSE_MAX_FEATURES = 4096  # auto: dense LAPJV up to this width (see solver_for)


@dataclass
class Assignment:
    """A map of A's features to B's with the cost of each match and, where known, a proof of
    optimality. ``n_b`` is the number of B features (default: ``len(perm)``)."""

    perm: np.ndarray  # [n_a] int64, values in [0, n_b)
    match_cost: np.ndarray  # [n_a] float64, cost of (i, perm[i]) in the variant's space
    solver: str
    status: str = "optimal"  # optimal | identity | time_limit
    gap: float = 0.0  # proven objective minus dual lower bound (0 when certified/dense)
    info: dict = field(default_factory=dict)
    kind: str = "permutation"  # permutation | injective | many_to_one
    n_b: int | None = None

    def __post_init__(self) -> None:
        if self.n_b is None:
            self.n_b = len(self.perm)

    @property
    def objective(self) -> float:
        return float(self.match_cost.sum())


def one_to_one(result: Assignment, n_b: int) -> Assignment:
    """Mark an exact LAP's answer as a permutation (n_a = n_b) or an injective map (n_a < n_b)."""
    result.kind = "permutation" if len(result.perm) == n_b else "injective"
    result.n_b = n_b
    return result


def check_map(perm: np.ndarray, kind: str, n_b: int) -> str | None:
    """What is wrong with ``perm`` as a map of this kind into ``n_b`` features (None: nothing)."""
    n_a = len(perm)
    if kind not in KINDS:
        return f"unknown kind {kind!r} (one of {KINDS})"
    if kind == "permutation":
        if n_b != n_a or not np.array_equal(np.sort(perm), np.arange(n_a)):
            return f"'perm' is not a permutation of 0..{n_a - 1}"
        return None
    if n_a and (perm.min() < 0 or perm.max() >= n_b):
        return f"'perm' has values outside 0..{n_b - 1}"
    if kind == "injective" and (n_a > n_b or len(np.unique(perm)) != n_a):
        return f"'perm' is not injective ({n_a} features into {n_b})"
    return None


SOLVERS = ("dense", "certified")


def solver_for(n_a: int, n_b: int, solver: str = "auto",
               dense_max_features: int = DENSE_MAX_FEATURES) -> str:
    """The exact LAP method for an n_a x n_b problem: ``auto`` is the dense matrix + LAPJV up to
    ``dense_max_features`` (level or ahead up to 4096; from 8192 on the certified solver is
    ahead of ``lap.lapjv`` on both bench generators, level on a process's first call at persist
    8192, README benchmark), the certified sparse solver above (1.5-3.3x faster than
    ``lap.lapjv`` at 16384 on the EPYC, O(n k) memory plus the products where they fit). The
    workflow's rules and :func:`saematch.match` both decide with this."""
    if solver != "auto":
        if solver not in SOLVERS:
            raise SAEMatchError(f"solver must be auto or one of {SOLVERS}, got {solver!r}")
        return solver
    return "dense" if max(n_a, n_b) <= dense_max_features else "certified"


def assign_dense(cost: np.ndarray) -> Assignment:
    """Exact LAP on a dense cost matrix: LAPJV (Jonker and Volgenant 1987, PyPI ``lap``) in
    float64, 10-40x faster than scipy's ``linear_sum_assignment`` on SAE cost matrices (README,
    benchmark) and exact like it.

    Square [n, n]: a permutation. Rectangular [n_a, n_b] with n_a < n_b: every row gets a
    distinct column (an injective map); the columns left over stay unmatched.
    """
    if cost.ndim != 2 or cost.shape[0] > cost.shape[1]:
        raise SAEMatchError(f"cost matrix must be [n_a, n_b] with n_a <= n_b, got shape "
                            f"{cost.shape}")
    import lap  # lazy: most jobs only read assignments

    c = np.ascontiguousarray(cost, dtype=np.float64)
    n_a, n_b = c.shape
    if n_a == 0:
        perm = np.zeros(0, dtype=np.int64)
    else:
        _, x, _ = lap.lapjv(c, extend_cost=n_a < n_b, return_cost=True)
        perm = np.asarray(x[:n_a], dtype=np.int64)
    return one_to_one(Assignment(perm=perm, match_cost=c[np.arange(n_a), perm], solver="dense"),
                      n_b)


def top1(partner: np.ndarray, cost: np.ndarray, n_b: int) -> Assignment:
    """The many-to-one map that sends each A feature to its nearest B feature (exact: the
    argmin of its row of costs, see :func:`saematch.costs.nearest`)."""
    return Assignment(perm=np.asarray(partner, np.int64), match_cost=np.asarray(cost, np.float64),
                      solver="top1", kind="many_to_one", n_b=n_b)


def identity(n: int, match_cost: np.ndarray | None = None) -> Assignment:
    """The no-permutation baseline: feature i of A stays feature i of B."""
    mc = np.zeros(n) if match_cost is None else np.asarray(match_cost, dtype=np.float64)
    return Assignment(perm=np.arange(n, dtype=np.int64), match_cost=mc, solver="identity",
                      status="identity")


def permute_codes(f_a: np.ndarray, perm: np.ndarray, n_b: int | None = None) -> np.ndarray:
    """Move layer-A codes [..., n_a] into layer-B order [..., n_b] (``n_b`` default n_a):
    ``out[..., perm[i]] += f_a[..., i]``.

    For a permutation or an injective map that is a plain scatter (B features nobody maps to
    get 0). For a many-to-one map, the codes of all A features sent to one B feature are added
    (``np.add.at``): their decoder contributions in B's dictionary add up, as the decoder is
    linear in the codes.
    """
    n_b = f_a.shape[-1] if n_b is None else n_b
    out = np.zeros((*f_a.shape[:-1], n_b), dtype=f_a.dtype)
    if len(perm) and np.bincount(perm, minlength=n_b).max() > 1:
        np.add.at(out.reshape(-1, n_b).T, perm, f_a.reshape(-1, f_a.shape[-1]).T)
    else:
        out[..., perm] = f_a
    return out


def compose(*perms: np.ndarray) -> np.ndarray:
    """``compose(P_ab, P_bc)`` maps A to C: feature i goes to ``P_bc[P_ab[i]]`` (any kinds of
    map; a many-to-one step makes the composition many-to-one)."""
    out = np.arange(len(perms[0]))
    for p in perms:
        out = p[out]
    return out


def write_assignment(path: str | os.PathLike, a: Assignment, attrs: dict) -> None:
    """HDF5 with ``perm`` and ``match_cost`` datasets; solver, status, gap, objective, kind and
    n_b as attrs. A map that is not what its kind says is refused, before anything is written."""
    problem = check_map(a.perm, a.kind, a.n_b)
    if problem:
        raise SAEMatchError(f"{path}: {problem}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("perm", data=a.perm.astype(np.int64))
        h5.create_dataset("match_cost", data=a.match_cost.astype(np.float64))
        h5.attrs.update({"solver": a.solver, "status": a.status, "gap": float(a.gap),
                         "objective": a.objective, "kind": a.kind, "n_b": int(a.n_b), **attrs})
        for k, v in a.info.items():
            h5.attrs[f"info_{k}"] = v


def read_assignment(path: str | os.PathLike) -> Assignment:
    """Read an assignment file and check that ``perm`` is the map its ``kind`` says (files
    without ``kind`` are permutations)."""
    try:
        with h5py.File(path, "r") as h5:
            perm, mc = h5["perm"][()], h5["match_cost"][()]
            attrs = dict(h5.attrs)
    except Exception as exc:
        raise SAEMatchError(f"{path}: cannot read assignment ({exc})") from exc
    kind = str(attrs.get("kind", "permutation"))
    n_b = int(attrs.get("n_b", len(perm)))
    problem = check_map(perm, kind, n_b)
    if problem:
        raise SAEMatchError(f"{path}: {problem}")
    info = {k[5:]: v for k, v in attrs.items() if k.startswith("info_")}
    return Assignment(perm=perm, match_cost=mc, solver=str(attrs["solver"]),
                      status=str(attrs["status"]), gap=float(attrs["gap"]), info=info,
                      kind=kind, n_b=n_b)


def read_cost_matrix(path: str | os.PathLike) -> np.ndarray:
    """Read dataset ``cost``; refuse files that are unreadable or hold non-finite costs."""
    try:
        with h5py.File(path, "r") as h5:
            cost = h5["cost"][()]
    except Exception as exc:
        raise SAEMatchError(f"{path}: cannot read cost matrix ({exc})") from exc
    if not np.isfinite(cost).all():
        raise SAEMatchError(f"{path}: cost matrix holds non-finite values")
    return cost
