"""Held-out data as the evaluation steps read it, and the per-pair HDF5 files they write.

Every file here records which dataset (and which pair) it belongs to, so steps that combine
several find them by content, never by the order of a rule's inputs.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from ..atomic import PathLike, atomic_path
from ..errors import SAEMatchError
from ..results import LayerPair
from .activations import read_activations
from .text import read_corpus


@dataclass
class States:
    """One activation file: residual states after each layer at the non-BOS positions of the
    held-out sequences, in sequence-major order."""

    path: PathLike
    dataset: str
    keep: np.ndarray  # [n_seq, seq_len] bool: positions that were stored

    @property
    def n_seq(self) -> int:
        return len(self.keep)

    @property
    def seq(self) -> np.ndarray:
        """The sequence of each stored token [n_tokens]."""
        return np.repeat(np.arange(self.n_seq), self.keep.sum(1))

    def states(self, layer: int) -> np.ndarray:
        return read_activations(self.path, layer)


@dataclass
class HeldOut(States):
    """An activation file with the token ids of its corpus."""

    tokens: np.ndarray  # [n_seq, seq_len]
    bos_token_id: int


def read_states(path: PathLike) -> States:
    try:
        with h5py.File(path, "r") as h5:
            keep = h5["keep"][()]
            dataset = json.loads(h5.attrs["meta"])["dataset"]
    except (OSError, KeyError, ValueError) as exc:
        raise SAEMatchError(f"{path}: not an activation file of a named dataset ({exc})") from exc
    return States(path, dataset, keep)


def read_heldout(corpora: Sequence[PathLike],
                 activations: Sequence[PathLike]) -> dict[str, HeldOut]:
    """Each dataset's held-out tokens and states, paired by the dataset each file records (in
    the order of ``corpora``); a mismatch between the two is an error."""
    states = {}
    for path in activations:
        s = read_states(path)
        states[s.dataset] = s
    out = {}
    for path in corpora:
        c = read_corpus(path)
        name = c.meta["dataset"]
        if name not in states:
            raise SAEMatchError(f"{path}: no activation file for dataset {name!r}")
        s = states[name]
        if not np.array_equal(c.tokens != c.meta["bos_token_id"], s.keep):
            raise SAEMatchError(f"{s.path}: its positions do not match the tokens of {path}")
        out[name] = HeldOut(s.path, name, s.keep, tokens=c.tokens,
                            bos_token_id=c.meta["bos_token_id"])
    return out


def write_clean_loss(path: PathLike, ce: np.ndarray, mask: np.ndarray, attrs: dict) -> None:
    """Per-position clean CE [n_seq, seq_len] (0 outside ``mask``) and the mask, atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("ce", data=ce)
        h5.create_dataset("mask", data=mask)
        h5.attrs.update(attrs)


def read_clean_loss(paths: Sequence[PathLike], dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """The clean CE and loss mask of ``dataset`` among ``paths``."""
    for path in paths:
        with h5py.File(path, "r") as h5:
            if h5.attrs.get("dataset") == dataset:
                return h5["ce"][()], h5["mask"][()]
    raise SAEMatchError(f"no clean-loss file for dataset {dataset!r} among {list(paths)}")


def write_pair_groups(path: PathLike, pair: LayerPair,
                      groups: dict[str, dict[str, Any]]) -> None:
    """One group per dataset: arrays (lists of names become string datasets) and ``attrs``;
    the pair's width and layers as file attributes."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs.update(pair._asdict())
        for name, group in groups.items():
            g = h5.create_group(name)
            for key, value in group.items():
                if key == "attrs":
                    g.attrs.update(value)
                elif value and isinstance(value[0], str):
                    g.create_dataset(key, data=np.array(value, dtype=object),
                                     dtype=h5py.string_dtype())
                else:
                    g.create_dataset(key, data=np.asarray(value, dtype=np.float64))


def read_pair_groups(path: PathLike) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``(file attributes, {group: {name: array or list of str, "attrs": {...}}})``."""
    try:
        with h5py.File(path, "r") as h5:
            key = {k: v.item() if hasattr(v, "item") else v for k, v in h5.attrs.items()}
            groups = {}
            for name, g in h5.items():
                groups[name] = {k: ([x.decode() for x in v[()]] if v.dtype.kind == "O"
                                    else v[()]) for k, v in g.items()}
                groups[name]["attrs"] = {k: v.item() if hasattr(v, "item") else v
                                         for k, v in g.attrs.items()}
    except OSError as exc:
        raise SAEMatchError(f"{path}: cannot read ({exc})") from exc
    return key, groups
