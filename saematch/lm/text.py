"""Deterministic, offline text corpora: list files, split train/eval by file, cut token sequences.

Two real datasets need nothing but Debian and the running interpreter:
``prose`` is the reStructuredText source of the Python documentation (Debian package
``python3.11-doc``, ``/usr/share/doc/python3.11/html/_sources/**/*.rst.txt``) and ``code`` is the
standard library's own ``.py`` files (``sysconfig`` stdlib path, site-packages excluded).

Train and eval tokens are disjoint by construction: a file belongs to exactly one split, decided
by a salted hash of its path relative to the dataset root (stable across machines with the same
files, independent of listing order). Files are visited in hash order, not alphabetical, so a
token budget samples the whole tree instead of its first directories, and each file contributes
at most ``max_seqs_per_file`` sequences so no single long file dominates.
"""
from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..atomic import atomic_path
from ..errors import SAEMatchError

PYTHON_DOC_SOURCES = "/usr/share/doc/python3.11/html/_sources"
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}


@dataclass(frozen=True)
class TextSource:
    """A dataset: every file under ``root`` whose name ends with ``suffix``."""

    name: str
    root: str
    suffix: str

    def files(self) -> list[Path]:
        """All matching files, as paths relative to ``root``, sorted."""
        root = Path(self.root)
        if not root.is_dir():
            raise SAEMatchError(f"dataset {self.name}: root {root} is not a folder "
                                "(for prose: apt-get install python3.11-doc)")
        out = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in _EXCLUDED_DIRS)
            out += [Path(dirpath, f).relative_to(root) for f in filenames
                    if f.endswith(self.suffix)]
        if not out:
            raise SAEMatchError(f"dataset {self.name}: no *{self.suffix} files under {root}")
        return sorted(out)


def default_sources() -> dict[str, TextSource]:
    """The two built-in datasets: Python docs (prose) and the stdlib (code)."""
    return {"prose": TextSource("prose", PYTHON_DOC_SOURCES, ".rst.txt"),
            "code": TextSource("code", sysconfig.get_paths()["stdlib"], ".py")}


def _hash_unit(salt: str, rel: Path) -> float:
    """A stable number in [0, 1) for a file: the basis of both the split and the visiting order."""
    digest = hashlib.sha256(f"{salt}\0{rel.as_posix()}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_files(files: Sequence[Path], eval_fraction: float,
                salt: str = "saematch") -> tuple[list[Path], list[Path]]:
    """Disjoint (train, eval) file lists, each in hash order."""
    if not 0 < eval_fraction < 1:
        raise SAEMatchError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    ordered = sorted(files, key=lambda f: (_hash_unit(salt + ":order", f), f.as_posix()))
    train = [f for f in ordered if _hash_unit(salt, f) >= eval_fraction]
    evals = [f for f in ordered if _hash_unit(salt, f) < eval_fraction]
    return train, evals


@dataclass
class Corpus:
    """Token sequences [n_seq, seq_len] (BOS first) and, per sequence, the file it came from."""

    tokens: np.ndarray  # int64
    seq_file: np.ndarray  # [n_seq] int, index into ``files``
    files: list[str]  # paths relative to the dataset root, in the order first used
    meta: dict[str, Any]


def build_corpus(tokenizer: Any, source: TextSource, files: Sequence[Path], *, seq_len: int,
                 n_tokens: int, max_seqs_per_file: int = 4) -> Corpus:
    """Cut ``files`` (in the given order) into sequences until ``n_tokens`` tokens are reached.

    Each sequence is BOS followed by ``seq_len - 1`` consecutive tokens of one file (no
    special tokens inside); a file's trailing partial chunk is dropped. ``n_tokens`` counts
    every position including BOS, and is rounded up to whole sequences.
    """
    bos = tokenizer.bos_token_id
    if bos is None:
        raise SAEMatchError("tokenizer has no BOS token; sequences are defined to start with BOS")
    body = seq_len - 1
    n_seq = -(-n_tokens // seq_len)
    root = Path(source.root)
    rows: list[list[int]] = []
    seq_file: list[int] = []
    used: list[str] = []
    for rel in files:
        if len(rows) >= n_seq:
            break
        # Only the head of a file can be used; tokenising a generous character prefix keeps long
        # files cheap (about 4 characters per token; 8 leaves margin for dense code).
        text = (root / rel).read_text(encoding="utf-8", errors="replace")
        text = text[: 8 * body * max_seqs_per_file]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        k = min(len(ids) // body, max_seqs_per_file, n_seq - len(rows))
        if k == 0:
            continue
        used.append(rel.as_posix())
        for j in range(k):
            rows.append([bos] + ids[j * body:(j + 1) * body])
            seq_file.append(len(used) - 1)
    if len(rows) < n_seq:
        raise SAEMatchError(f"dataset {source.name}: only {len(rows) * seq_len} tokens available "
                            f"from {len(files)} files, {n_seq * seq_len} requested")
    meta = {"dataset": source.name, "root": str(root), "suffix": source.suffix,
            "seq_len": seq_len, "n_seq": n_seq, "max_seqs_per_file": max_seqs_per_file,
            "bos_token_id": int(bos)}
    return Corpus(np.asarray(rows, dtype=np.int64), np.asarray(seq_file, dtype=np.int64),
                  used, meta)


def write_corpus(path: str | os.PathLike, corpus: Corpus) -> None:
    """HDF5 with ``tokens``, ``seq_file`` and ``files``; ``meta`` as JSON attribute, atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("tokens", data=corpus.tokens)
        h5.create_dataset("seq_file", data=corpus.seq_file)
        h5.create_dataset("files", data=np.array(corpus.files, dtype=object),
                          dtype=h5py.string_dtype())
        h5.attrs["meta"] = json.dumps(corpus.meta, sort_keys=True)


def read_corpus(path: str | os.PathLike) -> Corpus:
    try:
        with h5py.File(path, "r") as h5:
            return Corpus(h5["tokens"][()], h5["seq_file"][()],
                          [f.decode() for f in h5["files"][()]], json.loads(h5.attrs["meta"]))
    except (OSError, KeyError) as exc:
        raise SAEMatchError(f"{path}: cannot read corpus ({exc})") from exc
