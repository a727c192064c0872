"""Rule matching_score: see saematch.lm.steps.matching_score_step."""
from saematch.lm.steps import matching_score_step
from saematch.workflow import layer_inputs, run

run(snakemake, lambda s: matching_score_step(  # noqa: F821
    s.input.activations, layer_inputs(s.input), s.input.assignments, s.wildcards.width,
    s.params.n_null, s.output.table))
