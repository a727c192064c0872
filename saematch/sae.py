"""JumpReLU SAEs: loading (Gemma Scope npz, SAELens folders, fetch manifests), validation and
folding.

A JumpReLU SAE computes ``pre = x @ W_enc + b_enc``, ``f = pre * (pre > threshold)`` and
``x_hat = f @ W_dec + b_dec``. Every loader validates what it reads, so a bad file fails here,
once, with its path in the message, instead of producing NaN costs three rules later. SAELens
folders and registry downloads are converted to this one form in :mod:`saematch.saelens`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_npz
from .errors import SAEMatchError

PARAM_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")


@dataclass(frozen=True)
class SAE:
    """The five arrays of a JumpReLU SAE (float32), plus where they came from.

    ``meta`` is JSON-able metadata where the source has it: model, hook name, layer, SAELens
    release and id, Neuronpedia id, and how the SAELens settings were folded in.
    """

    W_enc: np.ndarray  # [d_model, n]
    b_enc: np.ndarray  # [n]
    W_dec: np.ndarray  # [n, d_model]
    b_dec: np.ndarray  # [d_model]
    threshold: np.ndarray  # [n]
    source: str = "<memory>"
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

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


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` or ``.safetensors`` file (bfloat16 read exactly as float32).

    The format is told by content, not name: Hub cache blobs have no suffix.
    """
    if not path.exists():
        raise SAEMatchError(f"{path}: file not found")
    try:
        with open(path, "rb") as fh:
            zipped = fh.read(4) == b"PK\x03\x04"
        if not zipped and path.suffix != ".npz":
            return _read_safetensors(path)
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except SAEMatchError:
        raise
    except Exception as exc:  # zipfile/EOF/header errors all mean the same thing to a user
        raise SAEMatchError(f"{path}: cannot read ({type(exc).__name__}: {exc}); "
                            "the file is truncated or not an SAE parameter file") from exc


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(path)))
    except TypeError:  # bfloat16 has no numpy dtype (Llama Scope's weights, bf16 SAELens SAEs)
        return _read_safetensors_widening(path)


# safetensors dtypes numpy reads as they are (little-endian); BF16 is widened by its bits.
_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
                       "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def _read_safetensors_widening(path: Path) -> dict[str, np.ndarray]:
    """A safetensors file read from its header, bfloat16 widened to float32 exactly (a bfloat16
    is the upper 16 bits of a float32), without torch: the fold job's environment
    (envs/core.yaml) has none."""
    import struct

    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        bf16 = info["dtype"] == "BF16"
        dtype = np.dtype("<u2" if bf16 else _SAFETENSORS_DTYPES.get(info["dtype"], "V"))
        if dtype.kind == "V" or end - start != count * dtype.itemsize:
            raise SAEMatchError(f"{path}: tensor {name!r}: unsupported dtype {info['dtype']} or "
                                "size that does not match its shape")
        data = np.fromfile(path, dtype=dtype, count=count, offset=8 + n + start)
        if data.size != count:
            raise SAEMatchError(f"{path}: tensor {name!r} is truncated")
        if bf16:
            data = data.astype("<u4")
            data <<= 16
            data = data.view("<f4")
        out[name] = data.reshape(shape)
    return out


def read_manifest(path: Path) -> dict[str, Any]:
    """A fetch manifest (JSON naming the downloaded file(s) in the Hub cache)."""
    try:
        manifest = json.loads(path.read_text())
        Path(manifest["path"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SAEMatchError(f"{path}: not a valid fetch manifest ({exc})") from exc
    return manifest


def _is_manifest(path: Path) -> bool:
    return path.suffix == ".json" and path.name != "cfg.json"


def _saelens_folder(path: Path) -> Path | None:
    """The SAELens folder (one with ``cfg.json``) that ``path`` is or lies in, if any."""
    folder = path if path.is_dir() else path.parent
    if path.is_dir() or path.name in ("cfg.json", "sae_weights.safetensors"):
        return folder if (folder / "cfg.json").exists() else None
    return None


def load_sae(path: str | os.PathLike) -> SAE:
    """Load and validate an SAE.

    Accepts a Gemma Scope ``params.npz`` (or one written by :func:`save_sae`), a SAELens folder
    (``cfg.json`` + ``sae_weights.safetensors``; the folder, either file), a fetch manifest
    ``.json``, or a bare ``sae_weights.safetensors`` without ``cfg.json`` (its arrays used as
    they are). SAELens folders and registry downloads load to the SAE SAELens computes (see
    :mod:`saematch.saelens`).
    """
    path = Path(path)
    if _is_manifest(path):
        manifest = read_manifest(path)
        if "format" in manifest:
            from .saelens import load_manifest

            return load_manifest(manifest, str(path))
        path = Path(manifest["path"])
    folder = _saelens_folder(path)
    if folder is not None:
        from .saelens import load_folder

        return load_folder(folder)
    if path.is_dir():
        found = [path / n for n in ("params.npz", "sae_weights.safetensors") if (path / n).exists()]
        if not found:
            raise SAEMatchError(f"{path}: folder holds neither params.npz nor a SAELens SAE "
                                "(cfg.json + sae_weights.safetensors)")
        path = found[0]
    arrays = read_arrays(path)
    if "threshold" not in arrays and "log_threshold" in arrays:
        arrays["threshold"] = np.exp(arrays.pop("log_threshold"))
    missing = [k for k in PARAM_NAMES if k not in arrays]
    if missing:
        raise SAEMatchError(f"{path}: missing array(s) {missing}; found {sorted(arrays)}")
    params = {k: np.ascontiguousarray(arrays[k], dtype=np.float32) for k in PARAM_NAMES}
    meta = json.loads(str(arrays["meta"])) if "meta" in arrays else {}
    return validate(SAE(**params, source=str(path), meta=meta))


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """An SAE's metadata without loading its weights: from a fetch manifest, a SAELens folder
    (or either of its files) or an ``.npz`` written by :func:`save_sae`; ``{}`` if it has none."""
    path = Path(path)
    if _is_manifest(path):
        return read_manifest(path).get("meta", {})
    folder = _saelens_folder(path)
    if folder is not None:
        from .saelens import folder_meta

        return folder_meta(folder)
    if path.suffix == ".npz" and path.exists():
        with np.load(path, allow_pickle=False) as npz:
            return json.loads(str(npz["meta"])) if "meta" in npz.files else {}
    return {}


def save_sae(path: str | os.PathLike, sae: SAE, **extra: np.ndarray) -> None:
    """Write a Gemma Scope style ``params.npz`` (plus any ``extra`` arrays and, if the SAE has
    metadata, ``meta``: a JSON string), atomically."""
    if sae.meta:
        extra = {"meta": np.array(json.dumps(sae.meta, sort_keys=True)), **extra}
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
        meta=sae.meta,
    )


def check_compatible(a: SAE, b: SAE, *, rectangular: bool = False) -> None:
    """Two SAEs can be matched only if they share d_model and feature count (``rectangular``:
    B may have more features than A, not fewer)."""
    if a.d_model != b.d_model:
        raise SAEMatchError(
            f"d_model mismatch: {a.source} has {a.d_model}, {b.source} has {b.d_model}"
        )
    fits = a.n_features <= b.n_features if rectangular else a.n_features == b.n_features
    if not fits:
        raise SAEMatchError(
            f"feature count mismatch: {a.source} has {a.n_features}, {b.source} has {b.n_features}"
        )
