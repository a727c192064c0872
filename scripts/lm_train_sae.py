"""Rule train_sae: see saematch.lm.steps.train_step."""
import _pkg  # noqa: F401  (this checkout's package first)

# isort: split
from saematch.lm.steps import train_step
from saematch.workflow import run

run(snakemake, lambda s: train_step(  # noqa: F821
    s.input.train, s.input.eval, s.params.layer, s.params.n_features, s.params.hyper,
    s.params.seed, s.output.params, s.output.card))
