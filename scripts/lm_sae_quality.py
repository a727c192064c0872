"""Rule sae_quality: see saematch.lm.steps.quality_step."""
from saematch.lm.steps import quality_step
from saematch.workflow import run

run(snakemake, lambda s: quality_step(  # noqa: F821
    s.input.cards, s.params.widths, s.output.table))
