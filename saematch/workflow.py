"""Glue for ``scripts/``: log to the rule's log file and turn bad input into one clear line."""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from .errors import SAEMatchError
from .results import CrossKey, PairKey


@contextlib.contextmanager
def job_threads(threads: int) -> Iterator[None]:
    """numba's parallel kernels on the job's ``threads`` for the duration. Snakemake sets
    OMP_NUM_THREADS, which torch and BLAS follow, but numba starts a thread per core of the
    machine: two one-thread jobs on 2 cores ran numba on 4 threads, and a 64-core node (or a
    one-CPU Slurm allocation) would get 64 per job. Sets ``NUMBA_NUM_THREADS`` where numba is
    not imported yet (importing it costs the jobs that never use it)."""
    threads = max(1, int(threads))
    numba = sys.modules.get("numba")
    if numba is None:
        before = os.environ.get("NUMBA_NUM_THREADS")
        os.environ["NUMBA_NUM_THREADS"] = str(threads)
    else:
        before = numba.get_num_threads()
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        if numba is not None:
            numba.set_num_threads(before)
        elif before is None:
            os.environ.pop("NUMBA_NUM_THREADS", None)
        else:
            os.environ["NUMBA_NUM_THREADS"] = before


def run(snakemake: Any, step: Callable[[Any], None]) -> None:
    """Run ``step(snakemake)`` with logging and progress bars going to ``snakemake.log[0]``, on
    the job's threads (:func:`job_threads`).

    A :class:`SAEMatchError` (bad input) is written as one line to the log and to stderr and the
    job exits 1; any other exception keeps its traceback, in the log and on stderr.
    """
    rule = getattr(snakemake, "rule", "saematch")
    console = sys.stderr
    threads = getattr(snakemake, "threads", 1)
    with (open(snakemake.log[0], "w") as logfile, contextlib.redirect_stderr(logfile),
          job_threads(threads)):
        logging.basicConfig(stream=logfile, level=logging.INFO, force=True,
                            format="%(asctime)s %(levelname)s %(message)s")
        log = logging.getLogger("saematch")
        log.info("rule %s on %s, SLURM_JOB_ID=%s, %s thread(s)", rule, socket.gethostname(),
                 os.environ.get("SLURM_JOB_ID", "-"), threads)
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
