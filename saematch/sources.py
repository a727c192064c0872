"""Where SAE parameter files come from: the Hugging Face Hub or a local folder.

Both use Gemma Scope's layout, ``layer_{L}/width_{W}/{folder}/params.npz``; a SAELens folder
(``cfg.json`` + ``sae_weights.safetensors``) in that place works too. Hub downloads land in the
standard Hub cache (``HF_HOME``/``HF_HUB_CACHE``), so a pre-filled cache on shared storage is
reused, and the token is read by huggingface_hub from the environment (``HF_TOKEN``) only: it
never appears in arguments, logs or results.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .atomic import write_json
from .errors import SAEMatchError


def sae_relpath(layer: int, width: str, folder: str, filename: str = "params.npz") -> str:
    """Gemma Scope's path of one SAE inside its repository or local root."""
    return f"layer_{layer}/width_{width}/{folder}/{filename}"


def local_sae_path(root: str | os.PathLike, layer: int, width: str, folder: str) -> Path:
    """The parameter file of a local SAE: ``params.npz``, else a SAELens safetensors file."""
    base = Path(root) / f"layer_{layer}" / f"width_{width}" / folder
    saelens = base / "sae_weights.safetensors"
    npz = base / "params.npz"
    return saelens if saelens.exists() and not npz.exists() else npz


def sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def fetch_hub_sae(repo_id: str, revision: str, layer: int, width: str, folder: str,
                  manifest: str | os.PathLike) -> Path:
    """Download one SAE's ``params.npz`` into the Hub cache and write a manifest naming it.

    The manifest (JSON: repo, revision, file, cache path, size, sha256) is the workflow's output;
    the 300 MB-19 GB parameter file itself stays in the shared cache, not copied into results/.
    """
    from huggingface_hub import hf_hub_download

    filename = sae_relpath(layer, width, folder)
    try:
        path = Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision))
    except Exception as exc:
        raise SAEMatchError(
            f"hub {repo_id}@{revision}: cannot fetch {filename} ({type(exc).__name__}: {exc})"
        ) from exc
    write_json(manifest, {
        "repo_id": repo_id, "revision": revision, "filename": filename,
        "path": str(path.resolve()), "size": path.stat().st_size, "sha256": sha256(path),
    })
    return path
