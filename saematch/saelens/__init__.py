"""SAEs published or trained with SAELens, loaded to exactly the SAE that SAELens computes.

Organised as SAELens is: :mod:`.formats` converts each on-disk format (SAELens folder, Gemma
Scope npz, Llama Scope) into SAELens's own config and state dict at one boundary;
:mod:`.jumprelu` turns SAELens's JumpReLU architecture into saematch's :class:`~saematch.SAE`
(the one architecture SAE Match can fold and match); :mod:`.registry` reads SAELens's
``pretrained_saes.yaml``. Every other architecture and every setting that cannot be folded into
a JumpReLU SAE exactly is refused here, with one error naming the file and the setting.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import SAEMatchError
from ..sae import SAE
from . import jumprelu
from .formats import (
    FORMATS,
    METADATA_KEYS,
    UNSUPPORTED_CONVERSIONS,
    Format,
    Parts,
    checkpoint_statistics,
)
from .registry import RegistryEntry

ARCHITECTURES = {"jumprelu": jumprelu.to_sae}
REFUSED_ARCHITECTURES = {
    "standard": "a ReLU SAE has no thresholds (threshold 0 everywhere), and folding divides "
                "each feature by its threshold",
    "topk": "a TopK SAE keeps the k largest features of each input, which is not one "
            "threshold per feature",
    "abstopk": "an AbsTopK SAE keeps the k largest |features| of each input, which is not one "
               "threshold per feature",
    "batchtopk": "a BatchTopK training checkpoint; save it with SAELens's "
                 "save_inference_model, which turns it into a JumpReLU SAE",
    "matryoshka_batchtopk": "a BatchTopK training checkpoint; save it with SAELens's "
                            "save_inference_model, which turns it into a JumpReLU SAE",
    "gated": "a gated SAE decides which features fire with a separate gate encoder, not one "
             "threshold per feature",
    "transcoder": "a transcoder maps one hook to another, so it does not reconstruct its input",
    "skip_transcoder": "a transcoder maps one hook to another, so it does not reconstruct its "
                       "input",
    "jumprelu_transcoder": "a transcoder maps one hook to another, so it does not reconstruct "
                           "its input",
    "jumprelu_skip_transcoder": "a transcoder maps one hook to another, so it does not "
                                "reconstruct its input",
    "temporal": "a temporal SAE's features depend on earlier tokens",
    "matching_pursuit": "a matching-pursuit SAE selects features iteratively, not by a "
                        "threshold per feature",
}
# Normalisations that are an affine map of the input fold exactly, given their statistics.
FOLDABLE_NORMALISATIONS = {"none", "expected_average_only_in", "covariance_whitening"}
REFUSED_NORMALISATIONS = {
    "layer_norm": "each input is centred and scaled by its own mean and std",
    "constant_norm_rescale": "each input is scaled to norm sqrt(d_in) by its own norm",
}


def check_config(cfg: dict[str, Any], source: str, *, scaling_factor: float | None,
                 whitening: Any = None) -> None:
    """Refuse, with one error naming ``source`` and the setting, what cannot be matched as a
    JumpReLU SAE: other architectures and normalisations that are not a known affine map."""
    arch = cfg.get("architecture")
    if arch not in ARCHITECTURES:
        reason = REFUSED_ARCHITECTURES.get(arch, "an architecture saematch does not know")
        raise SAEMatchError(f"{source}: SAELens architecture {arch!r} cannot be matched as a "
                            f"JumpReLU SAE: {reason}")
    mode = cfg.get("normalize_activations")
    if mode in REFUSED_NORMALISATIONS:
        raise SAEMatchError(
            f"{source}: normalize_activations {mode!r} cannot be folded into the weights: "
            f"{REFUSED_NORMALISATIONS[mode]}, which is not linear in the input")
    if mode not in FOLDABLE_NORMALISATIONS:
        raise SAEMatchError(f"{source}: unknown normalize_activations {mode!r}")
    if mode == "expected_average_only_in" and scaling_factor is None:
        raise SAEMatchError(
            f"{source}: normalize_activations 'expected_average_only_in' needs the scaling "
            "factor the SAE was trained with (the SAELens registry's norm_scaling_factor, or "
            "activation_scaler.json beside cfg.json); none was found, and without it the SAE "
            "reads inputs of an unknown scale")
    if mode == "covariance_whitening" and whitening is None:
        raise SAEMatchError(
            f"{source}: normalize_activations 'covariance_whitening' needs the whitening "
            "statistics (activation_scaler.json and activation_whitening.safetensors beside "
            "cfg.json); none were found")


def layer_of(hook_name: str | None) -> int | None:
    """The block index in a TransformerLens hook name (``blocks.12.hook_resid_post`` -> 12)."""
    match = re.search(r"(?:^|\.)(?:blocks|layers)\.(\d+)\.", hook_name or "")
    return int(match.group(1)) if match else None


def describe(cfg: dict[str, Any], fmt: str) -> dict[str, Any]:
    """The metadata saematch keeps with an SAE: what it reads and how it was converted."""
    md = cfg.get("metadata") or {}
    meta = {
        "format": fmt, "architecture": cfg.get("architecture"), "d_in": cfg.get("d_in"),
        "d_sae": cfg.get("d_sae"), "dtype": cfg.get("dtype"),
        "apply_b_dec_to_input": cfg.get("apply_b_dec_to_input"),
        "normalize_activations": cfg.get("normalize_activations"),
        "model_name": md.get("model_name"), "hook_name": md.get("hook_name"),
        "hook_head_index": md.get("hook_head_index"), "layer": layer_of(md.get("hook_name")),
        "neuronpedia_id": md.get("neuronpedia_id"),
    }
    if cfg.get("reshape_activations") not in (None, "none"):
        meta["reshape_activations"] = cfg["reshape_activations"]
    return {k: v for k, v in meta.items() if v is not None}


def _build(parts: Parts, meta: dict[str, Any]) -> SAE:
    check_config(parts.cfg, parts.source, scaling_factor=parts.scaling_factor,
                 whitening=parts.whitening)
    mode = parts.cfg["normalize_activations"]
    if mode != "expected_average_only_in":
        parts.scaling_factor = None  # SAELens ignores a factor the config does not ask for
    if mode != "covariance_whitening":
        parts.whitening = None
    if parts.scaling_factor is not None:
        meta = {**meta, "norm_scaling_factor": parts.scaling_factor}
    if parts.whitening is not None:
        meta = {**meta, "whitening_folded": True}
    return ARCHITECTURES[parts.cfg["architecture"]](parts, meta)


def load_folder(folder: str | Path) -> SAE:
    """A SAELens folder (``cfg.json`` + ``sae_weights.safetensors``), as ``SAE.load_from_disk``
    reads it, with a training checkpoint's activation normalisation folded in."""
    folder = Path(folder)
    fmt = FORMATS["sae_lens"]
    cfg = fmt.config(folder / fmt.config_file, "", folder.name)
    factor, whitening = checkpoint_statistics(folder)
    source = str(folder / fmt.weights_file)
    check_config(cfg, str(folder / fmt.config_file), scaling_factor=factor, whitening=whitening)
    parts = Parts(cfg, fmt.state(folder / fmt.weights_file, cfg), source, factor, whitening)
    return _build(parts, describe(cfg, "sae_lens"))


def folder_meta(folder: str | Path) -> dict[str, Any]:
    """A SAELens folder's metadata, from ``cfg.json`` alone."""
    fmt = FORMATS["sae_lens"]
    return describe(fmt.config(Path(folder) / fmt.config_file, "", Path(folder).name),
                    "sae_lens")


def format_of(entry: RegistryEntry) -> Format:
    """The format of a registry SAE; conversions saematch does not read are refused."""
    if entry.conversion in FORMATS:
        return FORMATS[entry.conversion]
    what = UNSUPPORTED_CONVERSIONS.get(entry.conversion, "an unknown conversion")
    raise SAEMatchError(
        f"SAELens release {entry.release!r} (SAE {entry.sae_id!r}) uses conversion "
        f"{entry.conversion!r} ({what}); saematch reads {sorted(FORMATS)}")


def registry_config(fmt: Format, config_file: Path | None, entry: RegistryEntry) -> dict[str, Any]:
    """The config as ``SAE.from_pretrained`` builds it: the format's config, then the release's
    ``config_overrides`` and the registry's Neuronpedia id."""
    cfg = fmt.config(config_file, entry.repo_id, entry.path)
    overrides = {**entry.config_overrides, "neuronpedia_id": entry.neuronpedia_id}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in METADATA_KEYS:
            cfg["metadata"] = {**cfg["metadata"], key: value}
        else:
            cfg[key] = value
    return cfg


def load_manifest(manifest: dict[str, Any], source: str) -> SAE:
    """An SAE fetched from a SAELens release (see :func:`saematch.sources.fetch_saelens_sae`),
    as ``SAE.from_pretrained(release, sae_id)`` loads it, on raw inputs."""
    try:
        entry = RegistryEntry(**manifest["registry"])
        files = {name: Path(f["path"]) for name, f in manifest["files"].items()}
    except (KeyError, TypeError) as exc:
        raise SAEMatchError(f"{source}: not a valid SAELens fetch manifest ({exc})") from exc
    fmt = format_of(entry)
    cfg = registry_config(fmt, files.get(fmt.config_file), entry)
    weights = files[fmt.weights_file]
    parts = Parts(cfg, fmt.state(weights, cfg), str(weights), entry.norm_scaling_factor)
    return _build(parts, manifest.get("meta") or describe(cfg, entry.conversion))
