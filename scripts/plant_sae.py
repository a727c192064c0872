"""Rule plant_sae: see saematch.steps.plant_step."""
from saematch.steps import plant_step
from saematch.workflow import run

run(snakemake, lambda s: plant_step(  # noqa: F821
    s.params.spec, s.params.n_features, s.params.layer, s.output.params, s.output.truth))
