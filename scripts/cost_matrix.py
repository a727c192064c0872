"""Rule cost_matrix: see saematch.steps.cost_step."""
from saematch.features import Variant
from saematch.steps import cost_step
from saematch.workflow import pair_key, run

run(snakemake, lambda s: cost_step(  # noqa: F821
    s.input.sae_a, s.input.sae_b, s.output.cost, pair_key(s.wildcards),
    Variant.from_config(s.wildcards.variant, s.params.spec), s.params.block, s.params.device))
