"""What a per-pair result file is, read from the file itself.

Every per-pair artefact (cost matrix, candidate graph, assignment, pair metrics) records the
width, variant and layers it belongs to as HDF5 attributes; a cross-width artefact records the
narrow and the wide width instead of one width (:class:`CrossKey`). Steps that combine many of them
index their inputs by those attributes, so no step depends on the order in which a rule lists
its inputs, and a file that is missing or given twice is an error, not a silent mismatch.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import h5py

from .atomic import PathLike
from .errors import SAEMatchError


class PairKey(NamedTuple):
    """One layer pair of one width, matched by one variant."""

    width: str
    variant: str
    layer_a: int
    layer_b: int

    def attrs(self) -> dict:
        return self._asdict()


class LayerPair(NamedTuple):
    """One layer pair of one width, for results that cover every variant of it."""

    width: str
    layer_a: int
    layer_b: int

    @classmethod
    def from_wildcards(cls, wildcards: Any) -> LayerPair:
        return cls(wildcards.width, int(wildcards.a), int(wildcards.b))


class CrossKey(NamedTuple):
    """A narrow SAE at ``layer_a`` and a wider one at ``layer_b`` (the same layer, or the next),
    matched in the space of one variant."""

    narrow: str
    wide: str
    variant: str
    layer_a: int
    layer_b: int

    def attrs(self) -> dict:
        return self._asdict()


def read_pair_key(path: PathLike) -> PairKey | CrossKey:
    """The key a per-pair file records: a :class:`CrossKey` if it names a narrow and a wide
    width, else a :class:`PairKey`."""
    try:
        with h5py.File(path, "r") as h5:
            a = h5.attrs
            if "narrow" in a:
                return CrossKey(str(a["narrow"]), str(a["wide"]), str(a["variant"]),
                                int(a["layer_a"]), int(a["layer_b"]))
            return PairKey(str(a["width"]), str(a["variant"]), int(a["layer_a"]),
                           int(a["layer_b"]))
    except (OSError, KeyError) as exc:
        raise SAEMatchError(f"{path}: not a per-pair result file ({exc})") from exc


def index_pairs(files: Iterable[PathLike]) -> dict[PairKey | CrossKey, PathLike]:
    """``{key: file}`` from what each file says it holds; a key given twice is an error."""
    out: dict[PairKey | CrossKey, PathLike] = {}
    for f in files:
        key = read_pair_key(f)
        if key in out:
            raise SAEMatchError(f"{f} and {out[key]} both hold {key}")
        out[key] = f
    return out


def variants_of(index: dict[PairKey, PathLike]) -> list[str]:
    """The variants present, in the order their files were first listed (the config's order,
    which is a presentation order only: it is not a param, so reordering reruns nothing)."""
    return list(dict.fromkeys(k.variant for k in index))


def pick(index: dict[PairKey, PathLike], width: str, variant: str,
         pairs: Sequence[tuple[int, int]]) -> list[PathLike]:
    """The files of ``variant`` for ``pairs`` (in that order); one clear error if any is missing."""
    keys = [PairKey(width, variant, a, b) for a, b in pairs]
    missing = [k for k in keys if k not in index]
    if missing:
        raise SAEMatchError(f"no input file holds {missing[0]} ({len(missing)} missing)")
    return [index[k] for k in keys]
