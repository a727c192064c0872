"""Feature paths through consecutive matchings: the longest chains, and the path through one
feature (shared by the judge and the explorer's flow view)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def maximal_chains(lengths: np.ndarray, perms: Sequence[np.ndarray], n_paths: int,
                   min_length: int = 1) -> list[tuple[int, int, int]]:
    """The ``n_paths`` longest maximal chains as (start layer index, feature, length).

    ``lengths[s, i]`` is how many matched steps feature i of layer index s survives
    (``chains.h5``). A chain is maximal when no matched step leads into its start, so no chain
    listed is the tail of another. Ties go to the lower layer, then the lower feature index.
    """
    starts = []
    for s in range(lengths.shape[0]):
        fed = np.zeros(lengths.shape[1], dtype=bool)
        if s > 0:
            fed[perms[s - 1][lengths[s - 1] > 0]] = True  # a matched step arrives here
        for i in np.flatnonzero(~fed & (lengths[s] >= min_length)):
            starts.append((-int(lengths[s, i]), s, int(i)))
    return [(s, i, -neg) for neg, s, i in sorted(starts)[:n_paths]]


def follow(perms: Sequence[np.ndarray], start: int, feature: int, steps: int) -> list[int]:
    """Feature indices along the permutations from layer index ``start``, ``steps`` steps on
    (the first entry is ``feature`` itself)."""
    out = [int(feature)]
    for t in range(start, start + steps):
        out.append(int(perms[t][out[-1]]))
    return out
