"""Rule figures: see saematch.steps.figures_step."""
import _pkg  # noqa: F401  (this checkout's package first)

# isort: split
from saematch.steps import figures_step
from saematch.workflow import run


def main(s):
    n = len(s.params.layers) - 1
    metrics = {v: s.input.metrics[i * n:(i + 1) * n] for i, v in enumerate(s.params.variants)}
    figures_step(metrics, s.params.layers, s.input.folded, s.input.persistence,
                 s.params.distribution_pairs, s.wildcards.width, dict(s.output.items()))


run(snakemake, main)  # noqa: F821
