"""SAELens's JumpReLU SAE (``sae_lens/saes/jumprelu_sae.py``) as a saematch :class:`SAE`.

SAELens computes, for an input x (``process_sae_in``, ``encode``, ``decode``)::

    sae_in = x - b_dec * apply_b_dec_to_input
    pre    = sae_in @ W_enc + b_enc
    f      = relu(pre) * (pre > threshold)
    x_hat  = f @ W_dec + b_dec

For threshold > 0, ``relu(pre) * (pre > threshold) == pre * (pre > threshold)``, saematch's
JumpReLU. Subtracting b_dec is affine, so it folds into the effective encoder bias
``b_enc' = b_enc - b_dec @ W_enc``: the b_enc the data-free matching must see. The activation
normalisations that are affine maps of the input fold exactly as SAELens's own
``fold_activation_norm_scaling_factor`` and ``fold_activation_whitening`` fold them.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import SAEMatchError
from ..sae import SAE, validate
from .formats import Parts

STATE_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")


def _checked_state(parts: Parts) -> dict[str, np.ndarray]:
    """The five arrays as float32, with shapes checked against the config's d_in and d_sae."""
    missing = [k for k in STATE_NAMES if k not in parts.state]
    if missing:
        raise SAEMatchError(f"{parts.source}: missing array(s) {missing}; "
                            f"found {sorted(parts.state)}")
    arrays = {k: np.asarray(parts.state[k], dtype=np.float32) for k in STATE_NAMES}
    d_in, d_sae = parts.cfg.get("d_in"), parts.cfg.get("d_sae")
    d_in = d_in if d_in is not None else arrays["W_enc"].shape[0]
    d_sae = d_sae if d_sae is not None else arrays["W_enc"].shape[-1]
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in),
                "b_dec": (d_in,), "threshold": (d_sae,)}
    for name, shape in expected.items():
        if arrays[name].shape != shape:
            raise SAEMatchError(f"{parts.source}: {name} has shape {arrays[name].shape}, but the "
                                f"config says d_in={d_in}, d_sae={d_sae} (expected {shape})")
    return arrays


def _refuse_nonpositive_thresholds(threshold: np.ndarray, source: str) -> None:
    nonpos = ~(threshold > 0)
    if nonpos.any():
        i = int(np.argmax(nonpos))
        raise SAEMatchError(
            f"{source}: threshold must be > 0 to fold; {int(nonpos.sum())} feature(s) are not, "
            f"first feature {i} (threshold {float(threshold[i])!r}). A SAELens JumpReLU feature "
            "with threshold <= 0 is a plain ReLU feature, and folding divides by the threshold")


def _project(v: np.ndarray, W: np.ndarray, block: int = 8192) -> np.ndarray:
    """``v @ W`` in float64, a block of W's columns at a time (W stays float32 in memory)."""
    v = np.asarray(v, dtype=np.float64)
    return np.concatenate([v @ W[:, i:i + block].astype(np.float64)
                           for i in range(0, W.shape[1], block)])


def to_sae(parts: Parts, meta: dict[str, Any]) -> SAE:
    """The JumpReLU SAE that SAELens computes from ``parts``, on raw (unnormalised) inputs.

    The scaling factor is applied in float32 as SAELens applies it; the whitening matrices
    (float64 statistics) in float64, as SAELens does; the effective b_enc is accumulated in
    float64. Weights are held in float32.
    """
    p = _checked_state(parts)
    _refuse_nonpositive_thresholds(p["threshold"], parts.source)
    W_enc, b_enc, W_dec, b_dec = p["W_enc"], p["b_enc"], p["W_dec"], p["b_dec"]
    if parts.scaling_factor is not None:  # SAE.fold_activation_norm_scaling_factor
        s = np.float32(parts.scaling_factor)
        W_enc, W_dec, b_dec = W_enc * s, W_dec / s, b_dec / s
    if parts.whitening is not None:  # SAE.fold_activation_whitening
        w = {k: np.asarray(v, dtype=np.float64) for k, v in parts.whitening.items()}
        W_enc = (w["matrix"] @ W_enc).astype(np.float32)
        if not parts.cfg["apply_b_dec_to_input"]:
            b_enc = (b_enc - _project(w["mean"], W_enc)).astype(np.float32)
        W_dec = (W_dec @ w["inverse_matrix"]).astype(np.float32)
        b_dec = (b_dec @ w["inverse_matrix"] + w["mean"]).astype(np.float32)
    if parts.cfg["apply_b_dec_to_input"]:
        b_enc = (b_enc - _project(b_dec, W_enc)).astype(np.float32)
    arrays = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec,
              "threshold": p["threshold"]}
    return validate(SAE(**{k: np.ascontiguousarray(v, dtype=np.float32)
                           for k, v in arrays.items()}, source=parts.source, meta=meta))
