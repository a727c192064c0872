"""Rule substitution_table: see saematch.lm.steps.substitution_table_step."""
from saematch.lm.steps import substitution_table_step
from saematch.workflow import run

run(snakemake, lambda s: substitution_table_step(  # noqa: F821
    s.input.pairs, s.output.table, s.output.comparisons))
