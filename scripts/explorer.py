"""Rule explorer: see saematch.explore.steps.explorer_step."""
from saematch.explore.steps import explorer_step
from saematch.workflow import layer_inputs, run


def main(s):
    inputs = dict(s.input.items())
    explorer_step(s.output.explorer, width=s.wildcards.width, source=s.params.source,
                  variant=s.params.variant, evidence=layer_inputs(s.input),
                  assignments=s.input.assignments, metrics=s.input.metrics,
                  chains=s.input.chains, semantic=inputs.get("semantic", ()),
                  judge_table=inputs.get("judge_table"), flow_chains=s.params.flow_chains,
                  chunk=s.params.chunk)


run(snakemake, main)  # noqa: F821
