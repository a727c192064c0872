"""Rule clean_loss: see saematch.lm.steps.clean_loss_step."""
from saematch.lm.steps import clean_loss_step
from saematch.workflow import run

run(snakemake, lambda s: clean_loss_step(  # noqa: F821
    s.input.model, s.params.model, s.input.corpus, s.params.n_sequences, s.params.loss_stride,
    s.params.batch_size, s.output.clean))
