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


@dataclass(frozen=True)
class Variant:
    """How a matching variant turns SAEs into feature vectors.

    ``method`` is ``lap`` (solve an assignment on costs) or ``identity`` (no permutation).
    ``cosine`` unit-normalises each feature vector, so the squared distance is ``2 - 2 cos``.
    """

    name: str
    method: str = "lap"
    terms: tuple[str, ...] = TERMS
    folded: bool = True
    metric: str = "sqeuclidean"

    def __post_init__(self) -> None:
        if self.method not in ("lap", "identity"):
            raise SAEMatchError(f"variant {self.name}: unknown method {self.method!r}")
        bad = [t for t in self.terms if t not in TERMS]
        if bad or not self.terms:
            raise SAEMatchError(f"variant {self.name}: terms must be a non-empty subset of {TERMS}")
        if self.metric not in METRICS:
            raise SAEMatchError(f"variant {self.name}: metric must be one of {METRICS}")

    def attrs(self) -> dict:
        """How the feature vectors were made, as recorded beside costs and candidate graphs."""
        return {"terms": list(self.terms), "folded": self.folded, "metric": self.metric}

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


def variant_vectors(a: SAE, b: SAE, variant: Variant) -> tuple[np.ndarray, np.ndarray]:
    """Feature vectors of both layers as the variant defines them."""
    check_compatible(a, b)
    kw = dict(terms=variant.terms, folded=variant.folded, normalize=variant.metric == "cosine")
    return feature_vectors(a, **kw), feature_vectors(b, **kw)
