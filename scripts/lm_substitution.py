"""Rule substitution: see saematch.lm.steps.substitution_step and saematch.plots.substitution."""
import pandas as pd

from saematch import plots
from saematch.lm.steps import substitution_step
from saematch.steps import split_by_variant
from saematch.workflow import run


def main(s):
    corpora = dict(zip(s.params.datasets, s.input.corpora, strict=True))
    substitution_step(s.input.model, s.params.model, corpora, s.input.saes, s.params.layers,
                      split_by_variant(s.input.assignments, s.params.variants), s.params.batch_size,
                      s.params.loss_stride, s.output.table)
    plots.substitution(pd.read_csv(s.output.table, sep="\t"), s.wildcards.width, s.output.figure)


run(snakemake, main)  # noqa: F821
