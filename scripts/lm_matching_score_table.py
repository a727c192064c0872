"""Rule matching_score_table: see saematch.lm.steps.matching_score_table_step."""
from saematch.lm.steps import matching_score_table_step
from saematch.workflow import run

run(snakemake, lambda s: matching_score_table_step(  # noqa: F821
    s.input.pairs, s.output.table))
