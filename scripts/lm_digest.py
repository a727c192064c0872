"""Rule lm_digest: see saematch.lm.digest."""
import pandas as pd

from saematch.atomic import write_text
from saematch.lm.digest import digest
from saematch.workflow import run

run(snakemake, lambda s: write_text(s.output.digest, digest(  # noqa: F821
    *(pd.read_csv(f, sep="\t") for f in (s.input.substitution, s.input.comparisons,
                                         s.input.matching_score)), s.wildcards.width)))
