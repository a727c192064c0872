"""saematch: SAE Match (Balagansky, Maksimov, Gavrilov, ICLR 2025).

Data-free matching of JumpReLU SAE features across layers: fold each feature's threshold into
its encoder and decoder, then solve a linear assignment problem on the folded parameters.

Notebook API::

    from saematch import load_sae, fold, match
    a, b = load_sae("layer_12/.../params.npz"), load_sae("layer_13/.../params.npz")
    result = match(a, b)            # folded decoder + encoder + b_enc, exact LAP
    result.perm[i]                  # feature of layer 13 matched to feature i of layer 12
"""
from __future__ import annotations

from .assign import Assignment, compose, permute_codes
from .errors import SAEMatchError
from .features import Variant, feature_vectors
from .sae import SAE, fold, load_sae, save_sae

__all__ = ["SAE", "Assignment", "SAEMatchError", "Variant", "compose", "feature_vectors",
           "fold", "load_sae", "match", "permute_codes", "save_sae"]


def match(a: SAE, b: SAE, variant: Variant | None = None, *, block: int = 4096,
          device: str = "auto") -> Assignment:
    """Exact matching of ``a``'s features to ``b``'s (default: the paper's folded variant); a
    ``top1`` variant gives each feature of ``a`` its nearest feature of ``b`` (many-to-one)."""
    from .assign import assign_dense, identity, top1
    from .costs import cost_matrix, nearest
    from .features import variant_vectors
    from .metrics import per_feature_mse

    variant = variant or Variant("folded")
    A, B = variant_vectors(a, b, variant)
    if variant.method == "identity":
        return identity(len(A), per_feature_mse(A, B, range(len(B))) * A.shape[1])
    if variant.method == "top1":
        return top1(*nearest(A, B, block=block, device=device), n_b=len(B))
    return assign_dense(cost_matrix(A, B, block=block, device=device))
