"""Rule explorer: see saematch.explore.steps.explorer_step."""
from saematch.explore.steps import explorer_step
from saematch.steps import split_by_variant
from saematch.workflow import run


def main(s):
    inputs = dict(s.input.items())
    explorer_step(s.output.explorer, width=s.wildcards.width, source=s.params.source,
                  variant=s.params.variant, layers=s.params.layers, evidence=s.input.evidence,
                  assignments=s.input.assignments, metrics=s.input.metrics,
                  chains=s.input.chains,
                  semantic=split_by_variant(inputs.get("semantic", []), s.params.variants),
                  judge_table=inputs.get("judge_table"), **s.params.page)


run(snakemake, main)  # noqa: F821
