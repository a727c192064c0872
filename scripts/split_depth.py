"""Rule split_depth: see saematch.steps.depth_step."""
from saematch.steps import depth_step
from saematch.workflow import run

run(snakemake, lambda s: depth_step(  # noqa: F821
    s.input.links, s.input.narrow_assignments, s.input.narrow_metrics, s.input.wide_assignments,
    s.wildcards.narrow, s.wildcards.wide, s.params.variant, s.output.table))
