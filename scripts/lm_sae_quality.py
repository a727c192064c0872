"""Rule sae_quality: see saematch.lm.steps.quality_step and saematch.plots.sae_quality."""
import pandas as pd

from saematch import plots
from saematch.lm.steps import quality_step
from saematch.workflow import run


def main(s):
    quality_step(s.input.cards, s.params.rows, s.output.table)
    plots.sae_quality(pd.read_csv(s.output.table, sep="\t"), s.output.figure)


run(snakemake, main)  # noqa: F821
