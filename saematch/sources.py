"""Where SAE parameter files come from: the Hugging Face Hub, a SAELens release, or a local folder.

Hub and local sources use Gemma Scope's layout, ``layer_{L}/width_{W}/{folder}/params.npz``; a
SAELens folder (``cfg.json`` + ``sae_weights.safetensors``) in that place works too. A SAELens
release is resolved through SAELens's registry (repo, path, format, Neuronpedia id). Hub
downloads land in the standard Hub cache (``HF_HOME``/``HF_HUB_CACHE``), so a pre-filled cache
on shared storage is reused, and the token is read by huggingface_hub from the environment
(``HF_TOKEN``) only: it never appears in arguments, logs or results.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from .atomic import PathLike, write_json
from .errors import SAEMatchError
from .sae import read_meta

NEURONPEDIA = "https://www.neuronpedia.org"


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


def _download(repo_id: str, filename: str, revision: str) -> dict[str, Any]:
    """One file into the Hub cache; its record for a manifest (repo path, cache path, size,
    sha256, the commit the revision resolved to)."""
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision))
    except Exception as exc:
        raise SAEMatchError(
            f"hub {repo_id}@{revision}: cannot fetch {filename} ({type(exc).__name__}: {exc})"
        ) from exc
    return {"filename": filename, "path": str(path.resolve()), "size": path.stat().st_size,
            "sha256": sha256(path), "commit": _snapshot_commit(str(path))}


def _snapshot_commit(cache_path: str) -> str | None:
    """The commit of a Hub cache path as hf_hub_download returns it (``.../snapshots/<sha>/...``,
    a link to the blob)."""
    match = re.search(r"/snapshots/([0-9a-f]{40})/", cache_path)
    return match.group(1) if match else None


def fetch_hub_sae(repo_id: str, revision: str, layer: int, width: str, folder: str,
                  manifest: PathLike) -> Path:
    """Download one SAE's ``params.npz`` into the Hub cache and write a manifest naming it.

    The manifest (JSON: repo, revision, file, cache path, size, sha256) is the workflow's output;
    the 300 MB-19 GB parameter file itself stays in the shared cache, not copied into results/.
    """
    record = _download(repo_id, sae_relpath(layer, width, folder), revision)
    write_json(manifest, {"repo_id": repo_id, "revision": revision, **record})
    return Path(record["path"])


def fetch_saelens_sae(release: str, sae_id: str, revision: str, manifest: PathLike,
                      registry: PathLike | None = None) -> Path:
    """Download one SAE of a SAELens release, as ``SAE.from_pretrained(release, sae_id)`` would,
    and write a manifest that :func:`saematch.load_sae` loads.

    The config is fetched and checked first, so an SAE that cannot be matched (TopK, a
    transcoder, a normalisation that does not fold) is refused before its weights download.
    The manifest records the registry entry (``registry``: repo, path, format, Neuronpedia id,
    norm scaling factor), the requested revision and the commit it resolved to, each file
    (repo path, cache path, size, sha256) and the SAE's metadata; ``path``/``filename``/
    ``sha256`` name the weights file, as in a ``hub`` manifest.
    """
    from dataclasses import asdict

    from .saelens import check_config, describe, format_of, registry_config
    from .saelens.registry import lookup

    entry = lookup(release, sae_id, registry)
    fmt = format_of(entry)
    files = {}
    if fmt.config_file is not None:
        files[fmt.config_file] = _download(entry.repo_id, f"{entry.path}/{fmt.config_file}",
                                           revision)
    config_path = Path(files[fmt.config_file]["path"]) if fmt.config_file else None
    cfg = registry_config(fmt, config_path, entry)
    check_config(cfg, f"{release} {sae_id} ({entry.repo_id}/{entry.path})",
                 scaling_factor=entry.norm_scaling_factor)
    weights = _download(entry.repo_id, f"{entry.path}/{fmt.weights_file}", revision)
    files[fmt.weights_file] = weights
    meta = {**describe(cfg, entry.conversion), "release": release, "sae_id": sae_id,
            "repo_id": entry.repo_id}
    if entry.norm_scaling_factor is not None and \
            cfg["normalize_activations"] == "expected_average_only_in":
        meta["norm_scaling_factor"] = entry.norm_scaling_factor
    write_json(manifest, {
        "kind": "saelens", "format": entry.conversion, "registry": asdict(entry),
        "repo_id": entry.repo_id, "revision": revision, "files": files, "meta": meta,
        **weights})
    return Path(weights["path"])


def neuronpedia_id(sae: PathLike) -> str | None:
    """The Neuronpedia id of an SAE (``gemma-2-2b/12-gemmascope-res-16k``), or None if unknown.

    Reads metadata only: a fetch manifest, a SAELens folder or its ``cfg.json``, or an ``.npz``
    that saematch wrote from such an SAE (e.g. ``results/folded/...``).
    """
    return read_meta(sae).get("neuronpedia_id")


def neuronpedia_url(neuronpedia: str, feature: int) -> str:
    """A feature's Neuronpedia page."""
    return f"{NEURONPEDIA}/{neuronpedia}/{int(feature)}"
