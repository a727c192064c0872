"""Rule parent_map: see saematch.steps.parent_step."""
from saematch.features import Variant
from saematch.steps import parent_step
from saematch.workflow import pair_key, run

run(snakemake, lambda s: parent_step(  # noqa: F821
    s.input.sae_a, s.input.sae_b, s.output.parents, pair_key(s.wildcards),
    Variant.from_config(s.wildcards.variant, s.params.spec), s.params.block, s.params.device))
