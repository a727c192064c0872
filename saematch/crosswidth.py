"""Cross-width matching: what a wider SAE did to each feature of a narrower one.

Two maps per pair (narrow SAE at layer a, wide SAE at layer b = a or a + 1), both in the space of
one matching variant:

- the exact rectangular assignment (LAP) of every narrow feature to a distinct wide feature
  (:func:`saematch.assign.assign_dense`, or the certified solver), scored like a layer pair;
- the **parent map**: every wide feature to its nearest narrow feature (one GEMM pass,
  :func:`saematch.costs.nearest`). A link counts (the wide feature *has a parent*) when its MSE in
  the folded reference space is below the ``alpha`` quantile of a null.

The null of the parent map. A nearest neighbour out of n_narrow candidates is much closer than a
random partner even when nothing corresponds: under the random-pairing null of layer pairs
(:func:`saematch.metrics.null_threshold`) nearly every wide feature would get a parent. So the
null repeats the selection itself on a narrow SAE that cannot correspond: the narrow SAE rotated
by a random orthogonal matrix of the residual stream (every feature keeps its norms and its
geometry within its own SAE, any alignment with the wide SAE is gone). Wide features (a random
sample of ``ceil(100 / alpha)``, so about 100 null values lie below the threshold) pick their
nearest rotated narrow feature in the variant's space, and the ``alpha`` quantile of those
links' MSEs is the threshold: under no correspondence, a wide feature gets a parent with
probability about ``alpha``. The random-pairing threshold is reported beside it
(``parent_frac_matched_random_null``) to show the difference.

Per pair: each narrow feature's children (the wide features whose link to it counts), the split
factor (children per narrow feature that has any), the shares of narrow features with 0, 1, 2,
3+ children, the share of wide features without a parent, and the MSE distributions of both maps.
"""
from __future__ import annotations

import math

import numpy as np

from .assign import Assignment
from .features import TERMS, Variant, feature_vectors
from .metrics import QUANTILES, decoder_cosine, pair_metrics, per_feature_mse
from .sae import SAE, check_compatible


def rotate(sae: SAE, rng: np.random.Generator) -> SAE:
    """``sae`` in a random orthonormal basis of the residual stream (Haar-distributed): encoder
    columns and decoder rows turn together, so the SAE is intact but unaligned with any other."""
    d = sae.d_model
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q = (q * np.sign(np.diag(r))).astype(np.float32)
    return SAE(W_enc=q.T @ sae.W_enc, b_enc=sae.b_enc, W_dec=sae.W_dec @ q, b_dec=sae.b_dec @ q,
               threshold=sae.threshold, source=f"rotated {sae.source}")


def features(sae: SAE, idx: np.ndarray) -> SAE:
    """The SAE restricted to features ``idx``."""
    return SAE(W_enc=sae.W_enc[:, idx], b_enc=sae.b_enc[idx], W_dec=sae.W_dec[idx],
               b_dec=sae.b_dec, threshold=sae.threshold[idx], source=sae.source)


def null_rows(alpha: float) -> int:
    """Sample size of the top-1 null: about 100 null values below its ``alpha`` quantile."""
    return math.ceil(100 / alpha)


def top1_null(pick: SAE, among: SAE, variant: Variant, *, terms=TERMS, alpha: float,
              seed: int, block: int = 4096, device: str = "auto") -> tuple[float, np.ndarray]:
    """The ``alpha`` quantile of the MSE (folded ``terms`` space) of nearest-partner links when
    nothing corresponds: features of ``pick`` choose their nearest feature (in ``variant``'s
    space) of ``among`` rotated at random. Returns the threshold and the null MSEs."""
    from .costs import nearest  # torch: only the jobs that run a GEMM pass import it

    rng = np.random.default_rng(seed)
    rot = rotate(among, rng)
    idx = np.sort(rng.choice(pick.n_features, min(null_rows(alpha), pick.n_features),
                             replace=False))
    sub = features(pick, idx)
    partner, _ = nearest(variant.vectors(sub), variant.vectors(rot), block, device)
    mse = per_feature_mse(feature_vectors(sub, terms), feature_vectors(rot, terms), partner)
    return float(np.quantile(mse, alpha)), mse


def children_shares(counts: np.ndarray, prefix: str = "") -> dict:
    """Split factor (children per narrow feature that has any) and shares of narrow features
    with 0, 1, 2 and 3 or more children."""
    capped = np.bincount(np.minimum(counts, 3), minlength=4) / max(len(counts), 1)
    return {f"{prefix}split_factor": float(counts[counts > 0].mean()) if counts.any()
            else float("nan"),
            **{f"{prefix}parents_{k}": float(capped[k]) for k in range(3)},
            f"{prefix}parents_3plus": float(capped[3])}


def _quantiles(x: np.ndarray, prefix: str) -> dict:
    return {f"{prefix}_q{int(q * 100):02d}": float(np.quantile(x, q)) for q in QUANTILES}


def children_lists(parent: np.ndarray, has_parent: np.ndarray, mse: np.ndarray,
                   n_narrow: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the links that count: the children of narrow feature i are
    ``children[indptr[i]:indptr[i + 1]]``, closest (lowest MSE) first."""
    kids = np.flatnonzero(has_parent)
    kids = kids[np.lexsort((mse[kids], parent[kids]))]
    indptr = np.zeros(n_narrow + 1, dtype=np.int64)
    np.cumsum(np.bincount(parent[kids], minlength=n_narrow), out=indptr[1:])
    return indptr, kids.astype(np.int64)


def cross_links(narrow: SAE, wide: SAE, lap: Assignment, parents: Assignment, variant: Variant,
                *, terms=TERMS, alpha: float = 0.01, null_samples: int = 5, seed: int = 0,
                block: int = 4096, device: str = "auto",
                true_parent: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Per-feature arrays (the links file) and the summary of one cross-width pair.

    ``lap``: narrow -> wide injective map; ``parents``: wide -> narrow many-to-one map (both in
    ``variant``'s space). ``true_parent`` (planted families): each wide feature's true narrow
    parent or -1.
    """
    check_compatible(narrow, wide, rectangular=True)
    n_narrow = narrow.n_features
    lap_arrays, lap_summary = pair_metrics(narrow, wide, lap.perm, terms=tuple(terms),
                                           alpha=alpha, null_samples=null_samples, seed=seed,
                                           rectangular=True)
    parent = parents.perm
    mse = per_feature_mse(feature_vectors(wide, terms), feature_vectors(narrow, terms), parent)
    tau, _ = top1_null(wide, narrow, variant, terms=terms, alpha=alpha, seed=seed, block=block,
                       device=device)
    has_parent = mse < tau
    counts = np.bincount(parent[has_parent], minlength=n_narrow)
    indptr, children = children_lists(parent, has_parent, mse, n_narrow)
    lap_child = (parent[lap.perm] == np.arange(n_narrow)) & has_parent[lap.perm]
    arrays = {
        "parent": parent, "parent_cost": parents.match_cost, "parent_mse": mse,
        "parent_dec_cos": decoder_cosine(wide, narrow, parent), "has_parent": has_parent,
        "n_children": counts, "children_indptr": indptr, "children": children,
        "lap_partner": lap.perm, "lap_cost": lap.match_cost, "lap_mse": lap_arrays["mse"],
        "lap_dec_cos": lap_arrays["dec_cos"], "lap_matched": lap_arrays["matched"],
        "lap_to_child": lap_child,
    }
    summary = {
        "n_narrow": n_narrow, "n_wide": wide.n_features, "alpha": alpha,
        **children_shares(counts),
        "wide_no_parent": float(1 - has_parent.mean()),
        "parent_mse_mean": float(mse.mean()), **_quantiles(mse, "parent_mse"),
        "parent_dec_cos_mean": float(arrays["parent_dec_cos"].mean()),
        **_quantiles(arrays["parent_dec_cos"], "parent_dec_cos"),
        "parent_match_threshold": tau,
        "parent_frac_matched_random_null": float((mse < lap_summary["match_threshold"]).mean()),
        **{f"lap_{k}": v for k, v in lap_summary.items() if k not in ("alpha", "n_features")},
        "lap_solver": lap.solver, "lap_status": lap.status, "lap_gap": lap.gap,
        "lap_objective": lap.objective, "lap_to_child": float(lap_child.mean()),
    }
    if true_parent is not None:
        summary.update(planted_summary(parent, has_parent, true_parent, n_narrow))
    return arrays, summary


def planted_summary(parent: np.ndarray, has_parent: np.ndarray, true_parent: np.ndarray,
                    n_narrow: int) -> dict:
    """Against a planted truth: the share of true links found (right parent, and it counts),
    the share of parentless wide features given a parent, and the true children statistics."""
    linked = true_parent >= 0
    found = (parent == true_parent) & has_parent
    true_counts = np.bincount(true_parent[linked], minlength=n_narrow)
    return {"planted_links": int(linked.sum()),
            "planted_links_recovered": float(found[linked].mean()) if linked.any()
            else float("nan"),
            "planted_false_links": float(has_parent[~linked].mean()) if (~linked).any()
            else float("nan"),
            **children_shares(true_counts, "planted_"),
            "planted_wide_no_parent": float(1 - linked.mean())}


def split_along_depth(links_t: dict[str, np.ndarray], links_next: dict[str, np.ndarray],
                      narrow_perm: np.ndarray, narrow_matched: np.ndarray,
                      wide_perm: np.ndarray) -> dict:
    """Does the wide SAE split the same features, the same way, at layer t and at the next one?

    ``links_t``, ``links_next``: the links arrays (:func:`cross_links`) of the same-layer pairs
    at t and t+1; ``narrow_perm``, ``narrow_matched``: the narrow SAE's match t -> t+1 and its
    matched flags; ``wide_perm``: the wide SAE's match t -> t+1.

    Over narrow features that persist (their match t -> t+1 is *matched*): ``split_kept``,
    the share of those that split at t (2+ children) whose partner at t+1 splits too, next to
    ``split_base``, the share that split at t+1 among all persisting ones;
    ``children_followed``, the share of the children at t whose own match t -> t+1 in the wide
    SAE is a child of the narrow partner at t+1 (a random wide partner almost never is);
    ``children_corr``, the correlation of the children counts at t and at t+1.
    """
    n_children_t, n_children_next = links_t["n_children"], links_next["n_children"]
    indptr_t, children_t = links_t["children_indptr"], links_t["children"]
    indptr_next, children_next = links_next["children_indptr"], links_next["children"]
    alive = np.flatnonzero(narrow_matched)
    nxt = narrow_perm[alive]
    split_t, split_next = n_children_t[alive] >= 2, n_children_next[nxt] >= 2
    parent_next = np.full(len(wide_perm), -1, dtype=np.int64)  # wide feature at t+1 -> its parent
    parent_next[children_next] = np.repeat(np.arange(len(n_children_next)), np.diff(indptr_next))
    kids = np.repeat(np.arange(len(n_children_t)), np.diff(indptr_t))  # parent of each child
    partner = np.full(len(n_children_t), -1, dtype=np.int64)
    partner[alive] = nxt
    kept = partner[kids] >= 0
    followed = parent_next[wide_perm[children_t[kept]]] == partner[kids[kept]]
    counts_t, counts_next = n_children_t[alive].astype(float), n_children_next[nxt].astype(float)
    corr = (float(np.corrcoef(counts_t, counts_next)[0, 1])
            if len(alive) > 1 and counts_t.std() > 0 and counts_next.std() > 0 else float("nan"))
    return {"persisting": int(len(alive)),
            "split_t": float(split_t.mean()) if len(alive) else float("nan"),
            "split_kept": float(split_next[split_t].mean()) if split_t.any() else float("nan"),
            "split_base": float(split_next.mean()) if len(alive) else float("nan"),
            "children_followed": float(followed.mean()) if kept.any() else float("nan"),
            "children_corr": corr}
