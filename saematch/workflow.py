"""Glue for ``scripts/``: log to the rule's log file and turn bad input into one clear line."""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import traceback
from collections.abc import Callable
from typing import Any

from .errors import SAEMatchError
from .results import CrossKey, PairKey


def run(snakemake: Any, step: Callable[[Any], None]) -> None:
    """Run ``step(snakemake)`` with logging and progress bars going to ``snakemake.log[0]``.

    A :class:`SAEMatchError` (bad input) is written as one line to the log and to stderr and the
    job exits 1; any other exception keeps its traceback, in the log and on stderr.
    """
    rule = getattr(snakemake, "rule", "saematch")
    console = sys.stderr
    with open(snakemake.log[0], "w") as logfile, contextlib.redirect_stderr(logfile):
        logging.basicConfig(stream=logfile, level=logging.INFO, force=True,
                            format="%(asctime)s %(levelname)s %(message)s")
        log = logging.getLogger("saematch")
        log.info("rule %s on %s, SLURM_JOB_ID=%s", rule, socket.gethostname(),
                 os.environ.get("SLURM_JOB_ID", "-"))
        try:
            step(snakemake)
        except SAEMatchError as exc:
            msg = f"saematch [{rule}] error: {exc}"
            print(msg, file=logfile)
            print(msg, file=console)
            sys.exit(1)
        except Exception:
            tb = traceback.format_exc()
            print(tb, file=logfile)
            print(tb, file=console)
            sys.exit(1)


def layer_inputs(named: Any, prefix: str = "layer_") -> dict[int, str]:
    """Inputs a rule names ``layer_{L}`` as ``{L: path}``, in layer order.

    Rules hand per-layer files over by name, never as a list to be split by position.
    """
    return dict(sorted((int(k[len(prefix):]), str(v)) for k, v in named.items()
                       if k.startswith(prefix)))


def pair_key(wildcards: Any) -> PairKey | CrossKey:
    """The pair a per-pair job works on, from its ``width, variant, a, b`` wildcards, or for a
    cross-width job its ``narrow, wide, variant, a, b`` wildcards."""
    if "narrow" in wildcards.keys():
        return CrossKey(wildcards.narrow, wildcards.wide, wildcards.variant, int(wildcards.a),
                        int(wildcards.b))
    return PairKey(wildcards.width, wildcards.variant, int(wildcards.a), int(wildcards.b))
