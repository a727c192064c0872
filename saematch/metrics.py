"""Quality of a matching between two layers, measured in one reference space for every variant.

All variants (folded, unfolded, cosine, identity) are scored in the same space (by default
the folded decoder + encoder + b_enc vectors), so their numbers are comparable.

Matched / not matched. The paper has no binary criterion. We calibrate one against a null:
pair every feature of layer A with a uniformly random feature of layer B (``null_samples``
independent random permutations), pool the per-feature MSEs, and call a match *matched* when its
MSE is below the ``alpha`` quantile of that null. Under random pairing a match is therefore
called matched with probability ``alpha``: the per-match false-positive rate.
"""
from __future__ import annotations

import os

import h5py
import numpy as np

from .atomic import atomic_path
from .features import TERMS, feature_vectors
from .sae import SAE, check_compatible

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


CHUNK = 8192  # rows per float64 temporary: a 65k x 4609 copy would be 2.4 GB


def per_feature_mse(A: np.ndarray, B: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """``||a_i - b_perm(i)||^2 / D`` for each feature i, computed directly (no cancellation),
    ``CHUNK`` rows at a time."""
    perm = np.asarray(perm)
    out = np.empty(len(A))
    for s in range(0, len(A), CHUNK):
        diff = A[s:s + CHUNK].astype(np.float64) - B[perm[s:s + CHUNK]].astype(np.float64)
        out[s:s + CHUNK] = np.einsum("ij,ij->i", diff, diff) / A.shape[1]
    return out


def decoder_cosine(a: SAE, b: SAE, perm: np.ndarray) -> np.ndarray:
    """Cosine between each matched pair of decoder rows (folding does not change it), ``CHUNK``
    rows at a time."""
    out = np.empty(len(perm))
    for s in range(0, len(perm), CHUNK):
        da = a.W_dec[s:s + CHUNK].astype(np.float64)
        db = b.W_dec[perm[s:s + CHUNK]].astype(np.float64)
        num = np.einsum("ij,ij->i", da, db)
        out[s:s + CHUNK] = num / (np.linalg.norm(da, axis=1) * np.linalg.norm(db, axis=1))
    return out


def null_threshold(A: np.ndarray, B: np.ndarray, *, alpha: float, samples: int,
                   seed: int) -> tuple[float, np.ndarray]:
    """The ``alpha`` quantile of per-feature MSE under random pairing, and the null MSEs.

    Each feature of A gets a uniformly random, distinct feature of B (B may be the wider)."""
    rng = np.random.default_rng(seed)
    null = np.concatenate([per_feature_mse(A, B, rng.permutation(len(B))[:len(A)])
                           for _ in range(samples)])
    return float(np.quantile(null, alpha)), null


def pair_metrics(a: SAE, b: SAE, perm: np.ndarray, *, terms=TERMS, alpha: float = 0.01,
                 null_samples: int = 5, seed: int = 0, origin: np.ndarray | None = None,
                 rectangular: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """Per-feature arrays (mse, dec_cos, matched) and a summary dict for one matched pair.

    ``origin`` (planted families only) gives each layer-B feature's true layer-A parent, from
    which the fraction of persisting features whose planted partner was recovered is reported.
    ``rectangular``: B is a wider SAE than A (``perm`` maps A's features into B's).
    """
    check_compatible(a, b, rectangular=rectangular)
    A = feature_vectors(a, terms, folded=True)
    B = feature_vectors(b, terms, folded=True)
    mse = per_feature_mse(A, B, perm)
    cos = decoder_cosine(a, b, perm)
    tau, null = null_threshold(A, B, alpha=alpha, samples=null_samples, seed=seed)
    matched = mse < tau
    summary = {
        "n_features": len(perm),
        "mse_mean": float(mse.mean()),
        **{f"mse_q{int(q * 100):02d}": float(np.quantile(mse, q)) for q in QUANTILES},
        "dec_cos_mean": float(cos.mean()),
        "dec_cos_median": float(np.median(cos)),
        "random_mse_mean": float(null.mean()),
        "mse_ratio_to_random": float(mse.mean() / null.mean()),
        "match_threshold": tau,
        "alpha": alpha,
        "frac_matched": float(matched.mean()),
    }
    if origin is not None:
        parents = np.flatnonzero(origin >= 0)
        summary["planted_persisting"] = int(len(parents))
        summary["planted_recovered"] = float((perm[origin[parents]] == parents).mean())
    return {"mse": mse, "dec_cos": cos, "matched": matched}, summary


def write_pair_metrics(path: str | os.PathLike, arrays: dict[str, np.ndarray],
                       summary: dict) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        for k, v in arrays.items():
            h5.create_dataset(k, data=v)
        h5.attrs.update(summary)


def read_pair_metrics(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    with h5py.File(path, "r") as h5:
        return {k: h5[k][()] for k in h5}, {k: _py(v) for k, v in h5.attrs.items()}


def _py(v):
    """HDF5 attrs come back as numpy scalars/bytes; make them plain Python for tables."""
    if isinstance(v, bytes):
        return v.decode()
    return v.item() if hasattr(v, "item") else v
