"""Rule fold: see saematch.steps.fold_step."""
from saematch.steps import fold_step
from saematch.workflow import run

run(snakemake, lambda s: fold_step(s.input.sae, s.output.folded))  # noqa: F821
