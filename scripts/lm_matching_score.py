"""Rule matching_score: see saematch.lm.steps.matching_score_step."""
import pandas as pd

from saematch import plots
from saematch.lm.steps import matching_score_step
from saematch.steps import split_by_variant
from saematch.workflow import run


def main(s):
    matching_score_step(s.input.activations, s.input.saes, s.params.layers,
                        split_by_variant(s.input.assignments, s.params.variants),
                        s.params.n_null, s.output.table)
    plots.matching_score(pd.read_csv(s.output.table, sep="\t"), s.wildcards.width,
                         s.output.figure)


run(snakemake, main)  # noqa: F821
