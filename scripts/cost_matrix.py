"""Rule cost_matrix: see saematch.steps.cost_step."""
from saematch.steps import cost_step
from saematch.workflow import run

run(snakemake, lambda s: cost_step(  # noqa: F821
    s.input.sae_a, s.input.sae_b, s.output.cost, s.params.variant, s.wildcards.variant,
    s.params.layers, s.params.block, s.params.device))
