"""Rule export_model: see saematch.lm.steps.export_model_step."""
import _pkg  # noqa: F401  (this checkout's package first)

# isort: split
from saematch.lm.steps import export_model_step
from saematch.workflow import run

run(snakemake, lambda s: export_model_step(s.params.model, s.output.model))  # noqa: F821
