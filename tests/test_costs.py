"""Blockwise cost matrices equal the direct squared distances, whatever the block size."""
import h5py
import numpy as np
import pytest
from conftest import random_sae

from saematch.assign import read_cost_matrix
from saematch.costs import _costs_in_place, cost_matrix, write_cost_matrix
from saematch.errors import SAEMatchError
from saematch.features import Variant, variant_vectors
from saematch.gemm import exact_costs, sqnorms
from saematch.sae import check_compatible


def direct(A, B):
    A, B = A.astype(np.float64), B.astype(np.float64)
    return ((A[:, None, :] - B[None, :, :]) ** 2).sum(-1)


@pytest.mark.parametrize("block", [1, 7, 64, 1000])
def test_cost_matrix_equals_direct_distances(block):
    A, B = variant_vectors(random_sae(seed=1), random_sae(seed=2), Variant("folded"))
    ref = direct(A, B)
    np.testing.assert_allclose(cost_matrix(A, B, block=block), ref, rtol=1e-5,
                               atol=1e-5 * ref.max())


def test_fused_costs_round_as_every_consumer_does():
    """The compiled kernel that large cost matrices use gives the bits of
    :func:`saematch.gemm.exact_costs` (the dense and the certified solver must see the same
    numbers), clamping included."""
    A, B = variant_vectors(random_sae(seed=1), random_sae(seed=2), Variant("folded"))
    B[:len(A) // 2] = A[:len(A) // 2]  # zero distances: some round below 0 and are clamped
    na, nb, G = sqnorms(A), sqnorms(B), A @ B.T
    ref = exact_costs(na[:, None], nb[None, :], G)
    _costs_in_place(na, nb, G)
    np.testing.assert_array_equal(G.view(np.uint32), ref.view(np.uint32))
    assert (G == 0).any()


def test_cosine_variant_is_two_minus_two_cos():
    a, b = random_sae(seed=1), random_sae(seed=2)
    A, B = variant_vectors(a, b, Variant("c", terms=("decoder",), folded=False, metric="cosine"))
    cos = (a.W_dec @ b.W_dec.T) / np.outer(np.linalg.norm(a.W_dec, axis=1),
                                           np.linalg.norm(b.W_dec, axis=1))
    np.testing.assert_allclose(cost_matrix(A, B), 2 - 2 * cos, atol=1e-5)


def test_cost_file_roundtrip_and_nan_refused(tmp_path):
    A, B = variant_vectors(random_sae(seed=1), random_sae(seed=2), Variant("folded"))
    write_cost_matrix(tmp_path / "c.h5", A, B, attrs={"variant": "folded"}, block=10)
    np.testing.assert_array_equal(read_cost_matrix(tmp_path / "c.h5"), cost_matrix(A, B, 10))
    with h5py.File(tmp_path / "c.h5", "a") as h5:
        h5["cost"][0, 0] = np.nan
    with pytest.raises(SAEMatchError, match="c.h5: cost matrix holds non-finite"):
        read_cost_matrix(tmp_path / "c.h5")


def test_mismatched_saes_are_refused():
    with pytest.raises(SAEMatchError, match="d_model mismatch"):
        check_compatible(random_sae(d=16), random_sae(d=17))
    with pytest.raises(SAEMatchError, match="feature count mismatch"):
        check_compatible(random_sae(n=64), random_sae(n=65))
