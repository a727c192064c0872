"""Rule cross_figure: see saematch.steps.cross_figure_step."""
from saematch.steps import cross_figure_step
from saematch.workflow import run

run(snakemake, lambda s: cross_figure_step(  # noqa: F821
    s.input.links, s.input.depth, s.wildcards.narrow, s.wildcards.wide, s.output.figure))
