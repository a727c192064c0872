"""Rule substitution: see saematch.lm.steps.substitution_step."""
from saematch.lm.steps import substitution_step
from saematch.results import LayerPair
from saematch.workflow import run


def main(s):
    inputs = dict(s.input.items())
    substitution_step(s.input.corpora, s.input.activations, s.input.sae_a, s.input.sae_b,
                      s.input.assignments, LayerPair.from_wildcards(s.wildcards), s.output.pair,
                      n_boot=s.params.n_boot, seed=s.params.seed,
                      delta_loss_substitutes=s.params.delta_loss_substitutes,
                      model_dir=inputs.get("model"), model=s.params.model,
                      clean=inputs.get("clean", ()), batch_size=s.params.batch_size)


run(snakemake, main)  # noqa: F821
