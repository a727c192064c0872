"""Exact linear assignment of layer-A features to layer-B features, and its HDF5 artefact.

``perm[i] = j`` means feature i of layer A is matched to feature j of layer B. Codes of layer A
are carried to layer B's order by ``f_B[..., perm] = f_A`` (see :func:`permute_codes`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from .atomic import atomic_path
from .errors import SAEMatchError


@dataclass
class Assignment:
    """A permutation with the cost of each match and, where known, a proof of optimality."""

    perm: np.ndarray  # [n] int64
    match_cost: np.ndarray  # [n] float64, cost of (i, perm[i]) in the variant's space
    solver: str
    status: str = "optimal"  # optimal | identity | time_limit
    gap: float = 0.0  # proven objective minus dual lower bound (0 when certified/dense)
    info: dict = field(default_factory=dict)

    @property
    def objective(self) -> float:
        return float(self.match_cost.sum())


def assign_dense(cost: np.ndarray) -> Assignment:
    """Exact LAP on a dense square cost matrix with scipy (float64, deterministic)."""
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise SAEMatchError(f"cost matrix must be square, got shape {cost.shape}")
    from scipy.optimize import linear_sum_assignment  # lazy: most jobs only read assignments

    c = np.asarray(cost, dtype=np.float64)
    rows, cols = linear_sum_assignment(c)
    perm = np.empty(c.shape[0], dtype=np.int64)
    perm[rows] = cols
    return Assignment(perm=perm, match_cost=c[rows, cols], solver="dense")


def identity(n: int, match_cost: np.ndarray | None = None) -> Assignment:
    """The no-permutation baseline: feature i of A stays feature i of B."""
    mc = np.zeros(n) if match_cost is None else np.asarray(match_cost, dtype=np.float64)
    return Assignment(perm=np.arange(n, dtype=np.int64), match_cost=mc, solver="identity",
                      status="identity")


def permute_codes(f_a: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Move layer-A codes [..., n] into layer-B order: ``out[..., perm[i]] = f_a[..., i]``."""
    out = np.zeros_like(f_a)
    out[..., perm] = f_a
    return out


def compose(*perms: np.ndarray) -> np.ndarray:
    """``compose(P_ab, P_bc)`` maps A to C: feature i goes to ``P_bc[P_ab[i]]``."""
    out = np.arange(len(perms[0]))
    for p in perms:
        out = p[out]
    return out


def write_assignment(path: str | os.PathLike, a: Assignment, attrs: dict) -> None:
    """HDF5 with ``perm`` and ``match_cost`` datasets; solver, status, gap, objective as attrs."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("perm", data=a.perm.astype(np.int64))
        h5.create_dataset("match_cost", data=a.match_cost.astype(np.float64))
        h5.attrs.update({"solver": a.solver, "status": a.status, "gap": float(a.gap),
                         "objective": a.objective, **attrs})
        for k, v in a.info.items():
            h5.attrs[f"info_{k}"] = v


def read_assignment(path: str | os.PathLike) -> Assignment:
    """Read an assignment file and check that ``perm`` really is a permutation."""
    try:
        with h5py.File(path, "r") as h5:
            perm, mc = h5["perm"][()], h5["match_cost"][()]
            attrs = dict(h5.attrs)
    except Exception as exc:
        raise SAEMatchError(f"{path}: cannot read assignment ({exc})") from exc
    if not np.array_equal(np.sort(perm), np.arange(len(perm))):
        raise SAEMatchError(f"{path}: 'perm' is not a permutation of 0..{len(perm) - 1}")
    info = {k[5:]: v for k, v in attrs.items() if k.startswith("info_")}
    return Assignment(perm=perm, match_cost=mc, solver=str(attrs["solver"]),
                      status=str(attrs["status"]), gap=float(attrs["gap"]), info=info)


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
