"""Rule metrics_table: see saematch.steps.summary_step."""
from saematch.steps import summary_step
from saematch.workflow import run

run(snakemake, lambda s: summary_step(s.input.metrics, s.output.table))  # noqa: F821
