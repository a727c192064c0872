"""The params Snakemake would record for every job a config plans, without running any.

    python tests/planned_params.py CONFIGFILE WORKDIR   # prints JSON: [[rule, outputs, params]]

Each job's params are in the form Snakemake stores and compares to decide a rerun
(``persistence._params``: the sorted reprs of its non-derived params), so two configs whose
listings agree rerun nothing when one replaces the other. Run in its own process: Snakemake's
API changes the working directory and sets up global logging. Uses Snakemake 9 internals
(pyproject pins snakemake<10).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from snakemake.api import SnakemakeApi
from snakemake.settings.types import (
    ConfigSettings,
    DAGSettings,
    OutputSettings,
    Quietness,
    ResourceSettings,
)

REPO = Path(__file__).resolve().parent.parent


def planned_params(configfile: Path, workdir: Path) -> list[tuple[str, list[str], list[str]]]:
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        wapi = api.workflow(resource_settings=ResourceSettings(cores=1),
                            config_settings=ConfigSettings(configfiles=[configfile]),
                            snakefile=REPO / "Snakefile", workdir=workdir)
        wapi.dag(DAGSettings())
        wf = wapi._workflow
        wf._prepare_dag(forceall=False, ignore_incomplete=True, lock_warn_only=True)
        wf._build_dag()
        return sorted((job.rule.name, sorted(map(str, job.output)), wf.persistence._params(job))
                      for job in wf.dag.jobs)


if __name__ == "__main__":
    print(json.dumps(planned_params(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve())))
