"""Rule figures: see saematch.steps.figures_step."""
from saematch.steps import figures_step, split_by_variant
from saematch.workflow import run


def main(s):
    figures_step(split_by_variant(s.input.metrics, s.params.variants), s.params.layers,
                 s.input.folded, s.input.persistence,
                 s.params.distribution_pairs, s.wildcards.width, dict(s.output.items()))


run(snakemake, main)  # noqa: F821
