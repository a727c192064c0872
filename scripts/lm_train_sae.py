"""Rule train_sae: see saematch.lm.steps.train_step."""
from saematch.lm.steps import train_step
from saematch.workflow import run

run(snakemake, lambda s: train_step(  # noqa: F821
    s.input.train, s.input.eval, s.params.layer, s.params.n_features, s.params.hyper,
    s.params.seed, s.output.params, s.output.card))
