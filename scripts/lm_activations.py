"""Rule lm_activations: see saematch.lm.steps.activations_step."""
from saematch.lm.steps import activations_step
from saematch.workflow import run

run(snakemake, lambda s: activations_step(  # noqa: F821
    s.input.model, s.params.model, s.input.corpus, s.params.batch_size, s.params.dtype,
    s.output.activations))
