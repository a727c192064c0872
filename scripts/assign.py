"""Rule assign: see saematch.steps.assign_step."""
import _pkg  # noqa: F401  (this checkout's package first)

# isort: split
from saematch.steps import assign_step
from saematch.workflow import run

run(snakemake, lambda s: assign_step(  # noqa: F821
    s.output.assignment, s.params.variant, s.wildcards.variant, s.params.layers,
    **{k: s.input[k] for k in ("cost", "sae_a", "sae_b") if k in s.input.keys()}))
