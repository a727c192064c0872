# saematch: SAE Match (Balagansky et al., ICLR 2025) as a Snakemake workflow.
# Every file under results/ follows from config.yaml through the rules below; see README.
from snakemake.utils import min_version

min_version("9.0")


# config.yaml is the default; `--configfile other.yaml` replaces it (no merging of the two).
if not config:

    configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/sources.smk"
include: "rules/fold.smk"
include: "rules/costs.smk"
include: "rules/assign.smk"
include: "rules/metrics.smk"
include: "rules/persistence.smk"
include: "rules/figures.smk"
include: "rules/lm.smk"


report: "report/workflow.rst"


rule all:
    input:
        all_targets(),
    default_target: True
