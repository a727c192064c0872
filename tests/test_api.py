"""The notebook API: ``match`` decides like the workflow, ``match_chain`` is ``match`` pair by
pair, and the compiled kernels release the GIL so that its threads overlap."""
import importlib
import pkgutil

import numpy as np
import pytest
from numba.core.registry import CPUDispatcher

import saematch
from saematch import SAEMatchError, Variant, match, match_chain
from saematch.assign import assign_dense
from saematch.costs import cost_matrix
from saematch.features import variant_vectors
from saematch.synthetic import PlantedSpec, planted_layer

SPEC = PlantedSpec(n_features=300, d_model=32, seed=3, survive=0.7, noise=0.4)


@pytest.fixture(scope="module")
def family():
    return [planted_layer(SPEC, layer) for layer in range(4)]


def test_match_is_the_exact_assignment_with_either_solver(family):
    (a, _), (b, origin) = family[0], family[1]
    dense = assign_dense(cost_matrix(*variant_vectors(a, b, Variant("folded")))).perm
    assert match(a, b).solver == "dense"
    np.testing.assert_array_equal(match(a, b).perm, dense)
    sparse = match(a, b, solver="certified", k=4)
    assert sparse.solver == "certified"
    np.testing.assert_array_equal(sparse.perm, dense)
    kept = origin >= 0
    np.testing.assert_array_equal(dense[origin[kept]], np.flatnonzero(kept))


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_match_chain_is_match_pair_by_pair(family, workers):
    saes = [sae for sae, _ in family]
    chain = match_chain(saes, solver="certified", k=4, workers=workers)
    assert len(chain) == 3
    for t, res in enumerate(chain):
        np.testing.assert_array_equal(res.perm, match(saes[t], saes[t + 1]).perm)


@pytest.mark.parametrize("saes, workers, message", [(1, 2, "at least two SAEs"),
                                                     (3, 0, "workers must be"),
                                                     (3, 1.5, "workers must be")])
def test_match_chain_refuses_bad_arguments(family, saes, workers, message):
    with pytest.raises(SAEMatchError, match=message):
        match_chain([sae for sae, _ in family[:saes]], workers=workers)


def test_every_compiled_kernel_releases_the_gil():
    """A kernel compiled with numba's own ``njit`` would hold the GIL and serialise the threads of
    ``match_chain``: every dispatcher in the package comes from :mod:`saematch.jit`."""
    kernels = {}
    for info in pkgutil.walk_packages(saematch.__path__, "saematch."):
        module = importlib.import_module(info.name)
        kernels.update({f"{info.name}.{name}": bool(obj.targetoptions.get("nogil"))
                        for name, obj in vars(module).items()
                        if isinstance(obj, CPUDispatcher) and obj.__module__ == info.name})
    assert "saematch.certified.sparse_lap._augment" in kernels and len(kernels) > 20
    assert [name for name, nogil in kernels.items() if not nogil] == []
