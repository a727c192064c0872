"""Rule matching_score: see saematch.lm.steps.matching_score_step."""
from saematch.lm.steps import matching_score_step
from saematch.results import LayerPair
from saematch.workflow import run

run(snakemake, lambda s: matching_score_step(  # noqa: F821
    s.input.activations, s.input.sae_a, s.input.sae_b, s.input.assignments,
    LayerPair.from_wildcards(s.wildcards), s.params.n_null,
    s.params.n_boot, s.params.seed, s.output.pair))
