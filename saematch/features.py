"""Feature vectors: each SAE feature as one row of its (folded or raw) parameters.

NumPy only, so steps that just score matches never pay for importing torch.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import SAEMatchError
from .sae import SAE, check_compatible, fold

TERMS = ("decoder", "encoder", "b_enc")
METRICS = ("sqeuclidean", "cosine")
METHODS = ("lap", "identity", "top1")


@dataclass(frozen=True)
class Variant:
    """How a matching variant turns SAEs into feature vectors.

    ``method`` is ``lap`` (solve an assignment on costs: a permutation), ``identity`` (no
    permutation) or ``top1`` (each feature of A to its nearest feature of B, several may share
    one: Feature Flow's many-to-one map, Laptev et al. 2025). ``cosine`` unit-normalises each
    feature vector, so the squared distance is ``2 - 2 cos`` and top-1 is the highest cosine.
    """

    name: str
    method: str = "lap"
    terms: tuple[str, ...] = TERMS
    folded: bool = True
    metric: str = "sqeuclidean"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SAEMatchError(f"variant {self.name}: unknown method {self.method!r}")
        bad = [t for t in self.terms if t not in TERMS]
        if bad or not self.terms:
            raise SAEMatchError(f"variant {self.name}: terms must be a non-empty subset of {TERMS}")
        if self.metric not in METRICS:
            raise SAEMatchError(f"variant {self.name}: metric must be one of {METRICS}")

    def attrs(self) -> dict:
        """How the feature vectors were made, as recorded beside costs and candidate graphs."""
        return {"terms": list(self.terms), "folded": self.folded, "metric": self.metric}

    def vectors(self, sae: SAE) -> np.ndarray:
        """One SAE's feature vectors as this variant defines them."""
        return feature_vectors(sae, self.terms, folded=self.folded,
                               normalize=self.metric == "cosine")

    @classmethod
    def from_config(cls, name: str, spec: dict) -> Variant:
        return cls(name=name, method=spec.get("method", "lap"),
                   terms=tuple(spec.get("terms", TERMS)), folded=spec.get("folded", True),
                   metric=spec.get("metric", "sqeuclidean"))


def feature_vectors(sae: SAE, terms: Sequence[str] = TERMS, *, folded: bool = True,
                    normalize: bool = False) -> np.ndarray:
    """One row per feature: the concatenated ``terms`` of its parameters, float32 [n, D]."""
    s = fold(sae) if folded else sae
    parts = {"decoder": lambda: s.W_dec, "encoder": lambda: s.W_enc.T,
             "b_enc": lambda: s.b_enc[:, None]}
    vecs = np.concatenate([parts[t]() for t in terms], axis=1).astype(np.float32, copy=False)
    if normalize:
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        vecs = vecs / np.maximum(norms, np.finfo(np.float32).tiny)
    return np.ascontiguousarray(vecs)


def variant_vectors(a: SAE, b: SAE, variant: Variant, *,
                    rectangular: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Feature vectors of both layers as the variant defines them (``rectangular``: B may be a
    wider SAE than A, as in cross-width matching)."""
    check_compatible(a, b, rectangular=rectangular)
    return variant.vectors(a), variant.vectors(b)
