"""Rule assign: see saematch.steps.assign_step."""
from saematch.steps import assign_step
from saematch.workflow import run

INPUTS = ("cost", "candidates", "sae_a", "sae_b")
run(snakemake, lambda s: assign_step(  # noqa: F821
    s.output.assignment, s.params.variant, s.wildcards.variant, s.params.layers,
    certified=s.params.certified, block=s.params.block, device=s.params.device,
    **{k: s.input[k] for k in INPUTS if k in s.input.keys()}))  # noqa: SIM118 (Namedlist)
