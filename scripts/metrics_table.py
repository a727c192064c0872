"""Rule metrics_table: see saematch.steps.summary_step."""
import _pkg  # noqa: F401  (this checkout's package first)

# isort: split
from saematch.steps import summary_step
from saematch.workflow import run

run(snakemake, lambda s: summary_step(s.input.metrics, s.params.rows, s.output.table))  # noqa: F821
