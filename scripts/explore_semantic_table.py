"""Rule semantic_table: see saematch.explore.steps.semantic_table_step."""
from saematch.explore.steps import semantic_table_step
from saematch.workflow import run

run(snakemake, lambda s: semantic_table_step(  # noqa: F821
    s.input.scores, s.output.table, s.output.figure))
