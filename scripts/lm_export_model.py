"""Rule export_model: see saematch.lm.steps.export_model_step."""
from saematch.lm.steps import export_model_step
from saematch.workflow import run

run(snakemake, lambda s: export_model_step(s.params.model, s.output.model))  # noqa: F821
