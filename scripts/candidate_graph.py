"""Rule candidate_graph: see saematch.steps.candidates_step."""
from saematch.features import Variant
from saematch.steps import candidates_step
from saematch.workflow import pair_key, run

run(snakemake, lambda s: candidates_step(  # noqa: F821
    s.input.sae_a, s.input.sae_b, s.output.graph, pair_key(s.wildcards),
    Variant.from_config(s.wildcards.variant, s.params.spec), s.params.k, s.params.block,
    s.params.device))
