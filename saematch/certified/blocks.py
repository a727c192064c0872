"""Input checks shared by the candidate pass, the certificate and the driver."""
from __future__ import annotations

import numpy as np

from ..errors import SAEMatchError


def as_f32(X: np.ndarray, name: str) -> np.ndarray:
    """A C-contiguous float32 [n, D] array (no copy when it already is one)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise SAEMatchError(f"{name} must be 2-D [n, D], got shape {X.shape}")
    return X


def check_pair(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 inputs with ``n_A <= n_B`` rows of one length D."""
    A, B = as_f32(A, "A"), as_f32(B, "B")
    if A.shape[1] != B.shape[1] or A.shape[0] > B.shape[0]:
        raise SAEMatchError(f"A [n_a, D] and B [n_b, D] need the same D and n_a <= n_b, got "
                            f"{A.shape} and {B.shape}")
    return A, B
