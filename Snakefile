# saematch: SAE Match (Balagansky et al., ICLR 2025) as a Snakemake workflow.
# Every file under results/ follows from config.yaml through the rules below; see README.
import os

from snakemake.utils import min_version

min_version("9.0")

# Every job imports the saematch package that sits beside this Snakefile, also in conda
# environments and on cluster nodes where it is not pip-installed: script jobs inherit this
# process's environment (on Slurm, each job re-reads this file).
os.environ.update(
    PYTHONPATH=os.pathsep.join(p for p in (workflow.basedir, os.environ.get("PYTHONPATH")) if p)
)


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
include: "rules/lm.smk"
include: "rules/figures.smk"
include: "rules/explore.smk"
include: "rules/crosswidth.smk"


report: "report/workflow.rst"


rule all:
    input:
        all_targets(),
    default_target: True
