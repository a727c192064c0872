"""How long features persist: chains through composed permutations.

A chain starts at feature i of layer l_s and steps to ``P_s[i]`` at l_{s+1}, and so on, for as
long as every step is *matched* (see :mod:`saematch.metrics`). Composition
``P(A->C) = P(B->C) o P(A->B)`` is compared with matching A to C directly.
"""
from __future__ import annotations

import numpy as np

from .assign import compose
from .metrics import decoder_cosine
from .sae import SAE


def chain_lengths(perms: list[np.ndarray], matched: list[np.ndarray]) -> np.ndarray:
    """``out[s, i]``: how many consecutive matched steps feature i of layer s survives.

    Computed backwards in one pass: ``len_s[i] = matched_s[i] * (1 + len_{s+1}[P_s[i]])``.
    """
    m, n = len(perms), len(perms[0])
    out = np.zeros((m + 1, n), dtype=np.int64)
    for s in range(m - 1, -1, -1):
        out[s] = np.where(matched[s], 1 + out[s + 1][perms[s]], 0)
    return out[:m]


def survival(lengths: np.ndarray, d: int) -> float:
    """Fraction of features alive after ``d`` steps, over the start layers that have d steps."""
    m = lengths.shape[0]
    starts = range(0, m - d + 1)
    return float(np.mean([(lengths[s] >= d).mean() for s in starts])) if m >= d else float("nan")


def persistence_table(saes: list[SAE], perms: list[np.ndarray], matched: list[np.ndarray],
                      direct: dict[tuple[int, int], np.ndarray], max_distance: int) -> list[dict]:
    """One row per distance d = 1..max_distance.

    ``survival``: fraction of features whose chain lasts d steps. ``composed_dec_cos``: mean
    decoder cosine between a feature and its composed partner d layers on (random pairs give ~0).
    ``agree_direct``: fraction of features for which the composed permutation equals the direct
    matching of layers s and s+d (``direct[(s, s+d)]``, indices into ``saes``), over all features
    and over those whose chain is alive for d steps.
    """
    lengths = chain_lengths(perms, matched)
    rows = []
    for d in range(1, min(max_distance, len(perms)) + 1):
        cos, agree, agree_alive = [], [], []
        for s in range(len(perms) - d + 1):
            comp = compose(*perms[s:s + d])
            cos.append(decoder_cosine(saes[s], saes[s + d], comp).mean())
            if (s, s + d) in direct:
                same = comp == direct[(s, s + d)]
                agree.append(same.mean())
                alive = lengths[s] >= d
                if alive.any():
                    agree_alive.append(same[alive].mean())
        rows.append({
            "distance": d,
            "n_starts": len(perms) - d + 1,
            "survival": survival(lengths, d),
            "composed_dec_cos": float(np.mean(cos)),
            "agree_direct": float(np.mean(agree)) if agree else float("nan"),
            "agree_direct_alive": float(np.mean(agree_alive)) if agree_alive else float("nan"),
        })
    return rows
