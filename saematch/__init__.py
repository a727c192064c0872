"""saematch: SAE Match (Balagansky, Maksimov, Gavrilov, ICLR 2025).

Data-free matching of JumpReLU SAE features across layers: fold each feature's threshold into
its encoder and decoder, then solve a linear assignment problem on the folded parameters.

Notebook API::

    from saematch import load_sae, fold, match
    a, b = load_sae("layer_12/.../params.npz"), load_sae("layer_13/.../params.npz")
    result = match(a, b)            # folded decoder + encoder + b_enc, exact LAP
    result.perm[i]                  # feature of layer 13 matched to feature i of layer 12
    chain = match_chain([load_sae(p) for p in paths])   # layer t -> t + 1, two pairs at a time
"""
from __future__ import annotations

from collections.abc import Sequence

from .assign import DENSE_MAX_FEATURES, Assignment, compose, permute_codes
from .errors import SAEMatchError
from .features import Variant, feature_vectors
from .sae import SAE, fold, load_sae, save_sae

__all__ = ["SAE", "Assignment", "SAEMatchError", "Variant", "compose", "feature_vectors",
           "fold", "load_sae", "match", "match_chain", "permute_codes", "save_sae"]


def match(a: SAE, b: SAE, variant: Variant | None = None, *, solver: str = "auto",
          dense_max_features: int = DENSE_MAX_FEATURES, block: int = 4096,
          device: str = "auto", **certified_options) -> Assignment:
    """Exact matching of ``a``'s features to ``b``'s (default: the paper's folded variant); a
    ``top1`` variant gives each feature of ``a`` its nearest feature of ``b`` (many-to-one).

    ``solver`` as in the workflow (:func:`saematch.assign.solver_for`): ``auto`` builds the dense
    matrix up to ``dense_max_features`` and runs the certified sparse solver above, which never
    holds an n x n matrix (65k: O(n k) memory instead of 34 GB); ``certified_options`` (``k``,
    ``time_limit``, ``tol``, ...) go to :func:`saematch.certified.certified_assign`."""
    from .assign import assign_dense, identity, one_to_one, solver_for, top1
    from .costs import cost_matrix, nearest
    from .features import variant_vectors
    from .metrics import per_feature_mse

    variant = variant or Variant("folded")
    A, B = variant_vectors(a, b, variant, rectangular=a.n_features < b.n_features)
    if variant.method == "identity":
        return identity(len(A), per_feature_mse(A, B, range(len(B))) * A.shape[1])
    if variant.method == "top1":
        return top1(*nearest(A, B, block=block, device=device), n_b=len(B))
    if solver_for(len(A), len(B), solver, dense_max_features) == "certified":
        from .certified import certified_assign

        return one_to_one(certified_assign(A, B, block=block, device=device,
                                           **certified_options), len(B))
    return assign_dense(cost_matrix(A, B, block=block, device=device))


def match_chain(saes: Sequence[SAE], variant: Variant | None = None, *, workers: int = 2,
                **options) -> list[Assignment]:
    """:func:`match` of each SAE to the next one (layer t to t + 1), ``workers`` pairs at a time
    in threads: a pair's sparse solve is one core's work (the compiled kernels release the GIL),
    and the other pair's GEMM passes use the cores it leaves. Memory: ``workers`` pairs at once.
    One at a time where numba's threading layer is ``workqueue`` (:func:`saematch.jit.threadsafe`).
    ``options`` go to :func:`match`; the assignments are those of :func:`match`, in order."""
    from concurrent.futures import ThreadPoolExecutor

    from .jit import threadsafe

    if len(saes) < 2:
        raise SAEMatchError(f"match_chain needs at least two SAEs, got {len(saes)}")
    if not (isinstance(workers, int) and workers >= 1):
        raise SAEMatchError(f"workers must be an integer >= 1, got {workers!r}")
    pairs = list(zip(saes[:-1], saes[1:]))
    workers = min(workers, len(pairs)) if threadsafe() else 1
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda pair: match(*pair, variant, **options), pairs))
