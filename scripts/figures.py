"""Rule figures: see saematch.steps.figures_step."""
from saematch.steps import figures_step
from saematch.workflow import layer_inputs, run

run(snakemake, lambda s: figures_step(  # noqa: F821
    s.input.metrics, layer_inputs(s.input), s.input.persistence, s.params.distribution_pairs,
    s.wildcards.width, dict(s.output.items())))
