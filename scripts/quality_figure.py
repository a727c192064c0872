"""Rule quality_figure: see saematch.plots.sae_quality."""
import pandas as pd

from saematch import plots
from saematch.workflow import run

run(snakemake, lambda s: plots.sae_quality(  # noqa: F821
    pd.read_csv(s.input.table, sep="\t"), s.output.figure))
