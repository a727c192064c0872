"""Rule lm_figures: substitution and Matching Score figures of one width (saematch.plots)."""
import pandas as pd

from saematch import plots
from saematch.workflow import run


def main(s):
    plots.substitution(pd.read_csv(s.input.substitution, sep="\t"), s.wildcards.width,
                       s.output.substitution)
    plots.matching_score(pd.read_csv(s.input.matching_score, sep="\t"), s.wildcards.width,
                         s.output.matching_score)


run(snakemake, main)  # noqa: F821
