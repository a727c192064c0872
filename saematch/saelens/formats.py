"""The one boundary where on-disk formats are converted: each format's files become SAELens's
own form, a config dict as ``SAEConfig.to_dict()`` writes it (``architecture``, ``d_in``,
``d_sae``, ``dtype``, ``apply_b_dec_to_input``, ``normalize_activations``, ``metadata``) and a
state dict under SAELens's parameter names, as SAELens 6's loaders
(``sae_lens/loading/pretrained_sae_loaders.py``) produce them. Everything after this module
sees only that form.

Formats (SAELens's ``conversion_func`` names): ``sae_lens`` (a SAELens folder: ``cfg.json`` +
``sae_weights.safetensors``), ``gemma_2`` (Gemma Scope ``params.npz``) and ``llama_scope``
(Llama Scope ``hyperparams.json`` + ``checkpoints/final.safetensors``).
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SAEMatchError
from ..sae import read_arrays

# Top-level keys of SAELens < 6 configs that SAELens moves into ``metadata``.
METADATA_KEYS = (
    "model_name", "hook_name", "model_class_name", "hook_head_index",
    "model_from_pretrained_kwargs", "prepend_bos", "exclude_special_tokens", "neuronpedia_id",
    "context_size", "seqpos_slice", "dataset_path", "sae_lens_version",
    "sae_lens_training_version", "hook_name_out", "hook_head_index_out", "hf_hook_name",
    "hf_hook_name_out",
)
PRE_6_RENAMES = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
                 "activation_fn_str": "activation_fn"}
SCALER_FILE = "activation_scaler.json"  # written beside checkpoints by SAELens's trainer
WHITENING_FILE = "activation_whitening.safetensors"


@dataclass
class Parts:
    """One SAE in SAELens's form, plus the activation statistics its normalisation needs."""

    cfg: dict[str, Any]
    state: dict[str, np.ndarray]
    source: str  # the file errors name
    scaling_factor: float | None = None  # expected_average_only_in: the SAE reads x * factor
    whitening: dict[str, np.ndarray] | None = None  # covariance_whitening: mean, matrix, inverse


@dataclass(frozen=True)
class Format:
    """How one SAELens conversion reads its files (paths relative to the SAE's folder)."""

    config_file: str | None  # read first, so bad settings are refused before the weights
    weights_file: str
    config: Callable[[Path | None, str, str], dict[str, Any]]  # (file, repo_id, folder)
    state: Callable[[Path, dict[str, Any]], dict[str, np.ndarray]]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SAEMatchError(f"{path}: file not found") from exc
    except (OSError, ValueError) as exc:
        raise SAEMatchError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise SAEMatchError(f"{path}: expected a JSON object")
    return data


def _require(data: dict[str, Any], keys: tuple[str, ...], path: Path) -> None:
    missing = [k for k in keys if data.get(k) is None]
    if missing:
        raise SAEMatchError(f"{path}: missing key(s) {missing}")


def _major_version(version: Any) -> int:
    match = re.match(r"\s*(\d+)", str(version or ""))
    return int(match.group(1)) if match else 0


def saelens_config(path: Path | None, repo_id: str = "", folder: str = "") -> dict[str, Any]:
    """A SAELens ``cfg.json`` in SAELens 6 form: configs written before 6.0 get the renames and
    defaults of SAELens's ``handle_pre_6_0_config`` (architecture ``standard``,
    ``apply_b_dec_to_input`` true, boolean ``normalize_activations``)."""
    assert path is not None
    raw = _read_json(path)
    _require(raw, ("d_in", "d_sae", "dtype"), path)
    version = raw.get("sae_lens_version") or (raw.get("metadata") or {}).get("sae_lens_version")
    if _major_version(version) >= 6:
        _require(raw, ("architecture",), path)
        cfg = {**raw, "metadata": dict(raw.get("metadata") or {})}
    else:
        cfg = {PRE_6_RENAMES.get(k, k): v for k, v in raw.items()}
        cfg.setdefault("architecture", "standard")
        if cfg.get("activation_fn") == "topk" and \
                (cfg.get("activation_fn_kwargs") or {}).get("k") is not None:
            cfg["architecture"] = "topk"
        if isinstance(cfg.get("normalize_activations"), bool):
            cfg["normalize_activations"] = ("expected_average_only_in"
                                            if cfg["normalize_activations"] else "none")
        cfg["metadata"] = {k: v for k, v in cfg.items() if k in METADATA_KEYS}
    return defaults(cfg)


def defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    """SAELens's ``SAEConfig`` defaults for keys a config leaves out (or sets to null)."""
    for key, value in (("apply_b_dec_to_input", True), ("normalize_activations", "none"),
                       ("reshape_activations", "none"), ("metadata", {})):
        if cfg.get(key) is None:
            cfg[key] = value
    return cfg


def saelens_state(path: Path, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """``sae_weights.safetensors``; a leftover all-ones ``scaling_factor`` is dropped, as
    SAELens does, and ``log_threshold`` (SAELens < 6 JumpReLU) becomes ``threshold``."""
    state = read_arrays(path)
    if "scaling_factor" in state:
        if not np.allclose(state["scaling_factor"], 1.0):
            raise SAEMatchError(
                f"{path}: a 'scaling_factor' other than 1 (SAELens's finetuning_scaling_factor) "
                "scales each feature's output and is not supported")
        del state["scaling_factor"]
    if "threshold" not in state and "log_threshold" in state:
        state["threshold"] = np.exp(state.pop("log_threshold"))
    return state


def checkpoint_statistics(folder: Path) -> tuple[float | None, dict[str, np.ndarray] | None]:
    """The activation normalisation a SAELens training checkpoint has not folded yet: the
    trainer's ``activation_scaler.json`` (scaling factor) and ``activation_whitening.safetensors``
    (mean, matrix, inverse_matrix). Final SAEs have both folded in already."""
    scaler = folder / SCALER_FILE
    if not scaler.exists():
        return None, None
    data = _read_json(scaler)
    factor = data.get("scaling_factor")
    whitening = None
    if data.get("has_whitening", True) and (folder / WHITENING_FILE).exists():
        whitening = read_arrays(folder / WHITENING_FILE)
        _require(whitening, ("mean", "matrix", "inverse_matrix"), folder / WHITENING_FILE)
    return (None if factor is None else float(factor)), whitening


# Gemma Scope (SAELens's get_gemma_2_config_from_hf): everything follows from repo and folder.
GEMMA_2_MODELS = {"2b-it": ("gemma-2-2b-it", 2304), "9b-it": ("gemma-2-9b-it", 3584),
                  "27b-it": ("gemma-2-27b-it", 4608), "2b": ("gemma-2-2b", 2304),
                  "9b": ("gemma-2-9b", 3584), "27b": ("gemma-2-27b", 4608)}
GEMMA_2_ATTENTION_D_IN = {"2b": 2048, "9b": 4096, "27b": 4608}
GEMMA_2_WIDTHS = {"width_4k": 4096, "width_16k": 16384, "width_32k": 32768,
                  "width_65k": 65536, "width_131k": 131072, "width_262k": 262144,
                  "width_524k": 524288, "width_1m": 1048576}


def gemma_scope_config(_: Path | None, repo_id: str, folder: str) -> dict[str, Any]:
    """Gemma Scope's settings: JumpReLU, no b_dec subtraction, no normalisation. Model, hook
    and sizes come from the repo and folder names as SAELens derives them; where a name does
    not say (a renamed copy), they stay unknown and the weights decide the sizes."""
    key = next((k for k in GEMMA_2_MODELS if k in repo_id), None)
    model_name, d_in = GEMMA_2_MODELS.get(key, (None, None))
    match = re.search(r"layer_(\d+)", folder)
    layer = int(match.group(1)) if match else 0 if "embedding" in folder else None
    hook_name = None
    if "res" in repo_id:
        hook_name = "hook_embed" if "embedding" in folder else f"blocks.{layer}.hook_resid_post"
    elif "mlp" in repo_id:
        hook_name = f"blocks.{layer}.hook_mlp_out"
    elif "att" in repo_id:
        hook_name = f"blocks.{layer}.attn.hook_z"
        d_in = GEMMA_2_ATTENTION_D_IN.get(key, d_in)
    d_sae = next((n for k, n in GEMMA_2_WIDTHS.items() if k in folder), None)
    return defaults({"architecture": "jumprelu", "d_in": d_in, "d_sae": d_sae,
                     "dtype": "float32", "apply_b_dec_to_input": False,
                     "normalize_activations": "none", "embedding": "embedding" in folder,
                     "metadata": {"model_name": model_name, "hook_name": hook_name}})


def gemma_scope_state(path: Path, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """``params.npz`` (``w_*`` keys renamed ``W_*``). Embedding SAEs were trained on embeddings
    scaled by sqrt(d_model), which SAELens undoes: W_enc / sqrt(d_in), W_dec * sqrt(d_in)."""
    state = {("W_" + k[2:] if k.startswith("w_") else k): v for k, v in read_arrays(path).items()}
    if "scaling_factor" in state:
        if not np.allclose(state["scaling_factor"], 1.0):
            raise SAEMatchError(f"{path}: a 'scaling_factor' other than 1 is not supported")
        del state["scaling_factor"]
    if cfg.get("embedding") and "W_enc" in state and "W_dec" in state:
        root_d = np.float32(np.sqrt(cfg["d_in"] or state["W_enc"].shape[0]))
        state["W_enc"] = state["W_enc"].astype(np.float32) / root_d
        state["W_dec"] = state["W_dec"].astype(np.float32) * root_d
    return state


def llama_scope_config(path: Path | None, repo_id: str = "", folder: str = "") -> dict[str, Any]:
    """Llama Scope's ``hyperparams.json`` as SAELens's get_llama_scope_config_from_hf reads it:
    inputs scaled to norm sqrt(d_model) on average (``expected_average_only_in``; the factor is
    the registry's ``norm_scaling_factor``), one scalar threshold ``jump_relu_threshold *
    sqrt(d_model) / dataset_average_activation_norm.in`` for every feature."""
    assert path is not None
    hyper = _read_json(path)
    _require(hyper, ("d_model", "d_sae", "jump_relu_threshold", "hook_point_in",
                     "dataset_average_activation_norm"), path)
    try:
        norm_in = float(hyper["dataset_average_activation_norm"]["in"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SAEMatchError(f"{path}: dataset_average_activation_norm.in is missing") from exc
    d_in = int(hyper["d_model"])
    return defaults({
        "architecture": "jumprelu", "d_in": d_in, "d_sae": int(hyper["d_sae"]),
        "dtype": "bfloat16", "apply_b_dec_to_input": False,
        "normalize_activations": "expected_average_only_in",
        "jump_relu_threshold": float(hyper["jump_relu_threshold"]) * d_in ** 0.5 / norm_in,
        "metadata": {"model_name": "meta-llama/Llama-3.1-8B",
                     "hook_name": hyper["hook_point_in"]}})


def llama_scope_state(path: Path, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """``encoder.weight`` [d_sae, d_in] etc. in SAELens's layout; the scalar threshold for
    every feature, rounded to float32 as SAELens's float32 tensor holds it."""
    raw = read_arrays(path)
    _require(raw, ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"), path)
    return {"W_enc": raw["encoder.weight"].T, "W_dec": raw["decoder.weight"].T,
            "b_enc": raw["encoder.bias"], "b_dec": raw["decoder.bias"],
            "threshold": np.full(raw["encoder.bias"].shape, cfg["jump_relu_threshold"],
                                 dtype=np.float32)}


FORMATS = {
    "sae_lens": Format("cfg.json", "sae_weights.safetensors", saelens_config, saelens_state),
    "gemma_2": Format(None, "params.npz", gemma_scope_config, gemma_scope_state),
    "llama_scope": Format("hyperparams.json", "checkpoints/final.safetensors",
                          llama_scope_config, llama_scope_state),
}
# What the other SAELens conversions produce, for the refusal message.
UNSUPPORTED_CONVERSIONS = {
    "gemma_3": "Gemma Scope 2 (JumpReLU, params.safetensors; not converted here yet)",
    "llama_scope_r1_distill": "Llama Scope R1 distill (JumpReLU; not converted here yet)",
    "qwen_scope": "TopK SAEs", "sparsify": "SAELens architecture 'standard' (ReLU)",
    "connor_rob_hook_z": "ReLU SAEs in pickled .pt files",
    "deepseek_r1": "ReLU SAEs", "goodfire": "ReLU SAEs",
    "dictionary_learning_1": "dictionary_learning checkpoints (not converted here)",
    "gemma_2_transcoder": "transcoders", "mwhanna_transcoder": "transcoders",
    "mntss_clt_layer_transcoder": "cross-layer transcoders", "temporal": "temporal SAEs",
}
