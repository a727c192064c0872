"""Rule substitution: see saematch.lm.steps.substitution_step."""
from saematch.lm.steps import substitution_step
from saematch.workflow import layer_inputs, run

run(snakemake, lambda s: substitution_step(  # noqa: F821
    s.input.model, s.params.model, s.input.corpora, layer_inputs(s.input), s.input.assignments,
    s.wildcards.width, s.params.batch_size, s.params.loss_stride,
    s.output.table))
