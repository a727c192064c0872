"""Rule plant_sae: see saematch.steps.plant_step."""
import _pkg  # noqa: F401  (this checkout's package first)

# isort: split
from saematch.steps import plant_step
from saematch.workflow import run

run(snakemake, lambda s: plant_step(  # noqa: F821
    s.params.spec, s.params.n_features, s.params.layer, s.output.params, s.output.truth))
