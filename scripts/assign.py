"""Rule assign: see saematch.steps.assign_step."""
from saematch.features import Variant
from saematch.steps import assign_step
from saematch.workflow import pair_key, run

run(snakemake, lambda s: assign_step(  # noqa: F821
    s.output.assignment, pair_key(s.wildcards),
    Variant.from_config(s.wildcards.variant, s.params.spec),
    solver_options=s.params.solver_options, block=s.params.block, device=s.params.device,
    **dict(s.input.items())))
