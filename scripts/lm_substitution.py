"""Rule substitution: see saematch.lm.steps.substitution_step."""
from saematch.lm.steps import substitution_step
from saematch.results import LayerPair
from saematch.workflow import run

run(snakemake, lambda s: substitution_step(  # noqa: F821
    s.input.model, s.params.model, s.input.corpora, s.input.activations, s.input.clean,
    s.input.sae_a, s.input.sae_b, s.input.assignments,
    LayerPair.from_wildcards(s.wildcards),
    s.params.delta_loss_substitutes, s.params.batch_size, s.params.n_boot, s.params.seed,
    s.output.pair))
