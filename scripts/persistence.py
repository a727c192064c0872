"""Rule persistence: see saematch.steps.persistence_step."""
from saematch.steps import persistence_step
from saematch.workflow import layer_inputs, run

run(snakemake, lambda s: persistence_step(  # noqa: F821
    layer_inputs(s.input), s.input.consecutive, s.input.metrics, s.input.direct,
    s.wildcards.width, s.params.variant, s.params.max_distance, s.output.table,
    s.output.chains))
