"""Rule cross_links: see saematch.steps.cross_links_step."""
from saematch.features import Variant
from saematch.steps import cross_links_step
from saematch.workflow import run

run(snakemake, lambda s: cross_links_step(  # noqa: F821
    s.input.assignment, s.input.sae_a, s.input.sae_b, s.output.parents, s.output.links,
    Variant.from_config(s.wildcards.variant, s.params.spec), terms=s.params.terms,
    alpha=s.params.alpha, null_samples=s.params.null_samples, seed=s.params.seed,
    block=s.params.block, device=s.params.device, truth_wide=s.input.get("truth_wide"),
    truth_narrow=s.input.get("truth_narrow")))
