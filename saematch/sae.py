"""JumpReLU SAEs: loading (Gemma Scope npz, SAELens safetensors), validation and folding.

A JumpReLU SAE computes ``pre = x @ W_enc + b_enc``, ``f = pre * (pre > threshold)`` and
``x_hat = f @ W_dec + b_dec``. Every loader validates what it reads, so a bad file fails here,
once, with its path in the message, instead of producing NaN costs three rules later.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import write_npz
from .errors import SAEMatchError

PARAM_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")


@dataclass(frozen=True)
class SAE:
    """The five arrays of a JumpReLU SAE (float32), plus where they came from."""

    W_enc: np.ndarray  # [d_model, n]
    b_enc: np.ndarray  # [n]
    W_dec: np.ndarray  # [n, d_model]
    b_dec: np.ndarray  # [d_model]
    threshold: np.ndarray  # [n]
    source: str = "<memory>"

    @property
    def d_model(self) -> int:
        return self.W_dec.shape[1]

    @property
    def n_features(self) -> int:
        return self.W_dec.shape[0]

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Feature activations ``f`` of inputs ``x`` [..., d_model]."""
        pre = x @ self.W_enc + self.b_enc
        return pre * (pre > self.threshold)

    def decode(self, f: np.ndarray) -> np.ndarray:
        """Reconstruction from feature activations ``f`` [..., n]."""
        return f @ self.W_dec + self.b_dec

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        return self.decode(self.encode(x))


def validate(sae: SAE) -> SAE:
    """Check shapes, dtype, finiteness and ``threshold > 0``; raise one clear error if not."""
    src = sae.source
    if sae.W_dec.ndim != 2:
        raise SAEMatchError(f"{src}: W_dec must be 2-D [n, d_model], got shape {sae.W_dec.shape}")
    n, d = sae.W_dec.shape
    expected = {"W_enc": (d, n), "b_enc": (n,), "W_dec": (n, d), "b_dec": (d,), "threshold": (n,)}
    for name, shape in expected.items():
        arr = getattr(sae, name)
        if arr.shape != shape:
            raise SAEMatchError(
                f"{src}: {name} has shape {arr.shape}, expected {shape} "
                f"(n_features={n}, d_model={d} from W_dec)"
            )
        if not np.issubdtype(arr.dtype, np.floating):
            raise SAEMatchError(f"{src}: {name} has dtype {arr.dtype}, expected floating point")
        bad = ~np.isfinite(arr)
        if bad.any():
            idx = np.unravel_index(int(np.argmax(bad)), arr.shape)
            raise SAEMatchError(
                f"{src}: {name} has {int(bad.sum())} non-finite value(s) (NaN or inf), "
                f"first at {idx}"
            )
    nonpos = sae.threshold <= 0
    if nonpos.any():
        i = int(np.argmax(nonpos))
        raise SAEMatchError(
            f"{src}: threshold must be > 0 to fold; {int(nonpos.sum())} feature(s) are not, "
            f"first feature {i} (threshold {sae.threshold[i]!r})"
        )
    return sae


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise SAEMatchError(f"{path}: file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            return dict(load_file(str(path)))
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except SAEMatchError:
        raise
    except Exception as exc:  # zipfile/EOF/header errors all mean the same thing to a user
        raise SAEMatchError(f"{path}: cannot read ({type(exc).__name__}: {exc}); "
                            "the file is truncated or not an SAE parameter file") from exc


def resolve(path: str | os.PathLike) -> Path:
    """Follow a fetch manifest (``.json`` with a ``path`` key) to the parameter file it names."""
    path = Path(path)
    if path.suffix == ".json" and path.name != "cfg.json":
        try:
            return Path(json.loads(path.read_text())["path"])
        except (OSError, ValueError, KeyError) as exc:
            raise SAEMatchError(f"{path}: not a valid fetch manifest ({exc})") from exc
    if path.is_dir():
        for name in ("params.npz", "sae_weights.safetensors"):
            if (path / name).exists():
                return path / name
        raise SAEMatchError(f"{path}: folder holds neither params.npz nor sae_weights.safetensors")
    return path


def load_sae(path: str | os.PathLike) -> SAE:
    """Load and validate an SAE.

    Accepts a Gemma Scope ``params.npz``, a SAELens folder or its ``sae_weights.safetensors``
    (``threshold`` or ``log_threshold``), or a fetch manifest ``.json`` naming either.
    """
    file = resolve(path)
    arrays = _read_arrays(file)
    if "threshold" not in arrays and "log_threshold" in arrays:
        arrays["threshold"] = np.exp(arrays.pop("log_threshold"))
    missing = [k for k in PARAM_NAMES if k not in arrays]
    if missing:
        raise SAEMatchError(f"{file}: missing array(s) {missing}; found {sorted(arrays)}")
    params = {k: np.ascontiguousarray(arrays[k], dtype=np.float32) for k in PARAM_NAMES}
    return validate(SAE(**params, source=str(file)))


def save_sae(path: str | os.PathLike, sae: SAE, **extra: np.ndarray) -> None:
    """Write a Gemma Scope style ``params.npz`` (plus any ``extra`` arrays), atomically."""
    write_npz(path, **{k: getattr(sae, k) for k in PARAM_NAMES}, **extra)


def fold(sae: SAE) -> SAE:
    """Fold each feature's threshold into its weights so every feature fires at 1.

    ``W_enc[:, i] /= theta_i``, ``b_enc[i] /= theta_i``, ``W_dec[i] *= theta_i``, threshold 1.
    For theta > 0 the reconstruction is unchanged: ``pre' = pre / theta`` crosses 1 exactly where
    ``pre`` crosses theta, and the decoder scales the smaller activation back up.
    """
    validate(sae)
    theta = sae.threshold
    return SAE(
        W_enc=sae.W_enc / theta[None, :],
        b_enc=sae.b_enc / theta,
        W_dec=sae.W_dec * theta[:, None],
        b_dec=sae.b_dec.copy(),
        threshold=np.ones_like(theta),
        source=f"{sae.source} (folded)",
    )


def check_compatible(a: SAE, b: SAE) -> None:
    """Two SAEs can be matched only if they share d_model and feature count."""
    if a.d_model != b.d_model:
        raise SAEMatchError(
            f"d_model mismatch: {a.source} has {a.d_model}, {b.source} has {b.d_model}"
        )
    if a.n_features != b.n_features:
        raise SAEMatchError(
            f"feature count mismatch: {a.source} has {a.n_features}, {b.source} has {b.n_features}"
        )
