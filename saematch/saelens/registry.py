"""SAELens's registry of pretrained SAEs (``pretrained_saes.yaml``): release and SAE id -> Hub
repo, path in the repo, conversion format, Neuronpedia id.

The file is read as data, from the installed sae-lens package (the ``saelens`` extra) or from a
path the config names; ``sae_lens`` itself, which imports torch, transformer-lens and wandb, is
never imported.
"""
from __future__ import annotations

import difflib
import functools
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import PathLike
from ..errors import SAEMatchError

REGISTRY_FILE = "pretrained_saes.yaml"


@dataclass(frozen=True)
class RegistryEntry:
    """One SAE of a SAELens release, as ``SAE.from_pretrained(release, sae_id)`` resolves it."""

    release: str
    sae_id: str
    repo_id: str
    path: str  # the SAE's folder inside the repo
    model: str
    conversion: str  # SAELens's conversion_func; "sae_lens" where the release names none
    neuronpedia_id: str | None = None
    norm_scaling_factor: float | None = None
    config_overrides: dict[str, Any] = field(default_factory=dict)


def registry_path(path: PathLike | None = None) -> Path:
    """``path`` itself, or the ``pretrained_saes.yaml`` inside the installed sae-lens package
    (located without importing it)."""
    if path is not None:
        return Path(path)
    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        raise SAEMatchError(
            "source saelens: the SAELens registry needs sae-lens installed "
            "(pip install 'saematch[saelens]') or source.saelens.registry naming a "
            f"{REGISTRY_FILE}")
    return Path(next(iter(spec.submodule_search_locations))) / REGISTRY_FILE


@functools.cache
def _read(path: Path) -> dict[str, Any]:
    import yaml

    try:
        with open(path) as fh:  # the C loader: the real file is 1.5 MB
            data = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as exc:
        raise SAEMatchError(f"{path}: cannot read the SAELens registry ({exc})") from exc
    if not isinstance(data, dict):
        raise SAEMatchError(f"{path}: not a SAELens registry (expected release -> entry)")
    return data


def lookup(release: str, sae_id: str, registry: PathLike | None = None) -> RegistryEntry:
    """Resolve one SAE as SAELens does; unknown release or id -> one error with near names."""
    path = registry_path(registry)
    data = _read(path)
    if release not in data:
        near = difflib.get_close_matches(release, list(data), n=3)
        raise SAEMatchError(f"{path}: no release {release!r}"
                            + (f"; did you mean {near}?" if near else ""))
    entry = data[release]
    try:
        saes = {str(s["id"]): s for s in entry["saes"]}
        repo_id, model = entry["repo_id"], entry["model"]
    except (KeyError, TypeError) as exc:
        raise SAEMatchError(f"{path}: release {release!r} lacks {exc} (SAELens format: "
                            "repo_id, model, saes: [{id, path, ...}])") from exc
    if sae_id not in saes:
        near = difflib.get_close_matches(sae_id, list(saes), n=3) or list(saes)[:3]
        raise SAEMatchError(f"{path}: release {release!r} has no SAE id {sae_id!r} "
                            f"({len(saes)} ids, e.g. {near})")
    sae = saes[sae_id]
    if "path" not in sae:
        raise SAEMatchError(f"{path}: release {release!r}, SAE {sae_id!r} has no path")
    nsf = sae.get("norm_scaling_factor")
    return RegistryEntry(
        release=release, sae_id=sae_id, repo_id=repo_id, path=str(sae["path"]), model=model,
        conversion=entry.get("conversion_func") or "sae_lens",
        neuronpedia_id=sae.get("neuronpedia"),
        norm_scaling_factor=None if nsf is None else float(nsf),
        config_overrides=dict(entry.get("config_overrides") or {}))
