"""Rule candidate_graph: see saematch.steps.candidates_step."""
from saematch.steps import candidates_step
from saematch.workflow import run

run(snakemake, lambda s: candidates_step(  # noqa: F821
    s.input.sae_a, s.input.sae_b, s.output.graph, s.params.variant, s.wildcards.variant,
    s.params.layers, s.params.k, s.params.block, s.params.device))
