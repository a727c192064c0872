"""Helpers for tests that need a live one-node Slurm cluster (see .ci/slurm.sh).

    from slurm_util import slurm_available, live_cluster

    ok, reason = slurm_available()
    if not ok:
        pytest.skip(reason)
    with live_cluster():
        subprocess.run(["snakemake", "--workflow-profile", "profiles/slurm-test", ...])

The cluster is brought up with ``bash .ci/slurm.sh install`` and ``start`` and always taken
down again with ``stop`` (which signals the daemons by their pid files only).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SLURM_SH = REPO_ROOT / ".ci" / "slurm.sh"
# The partition that .ci/slurm.sh creates and profiles/slurm-test submits to.
TEST_PARTITION = os.environ.get("SLURM_CI_PARTITION", "debug")
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")


def _packages_installed() -> bool:
    if shutil.which("dpkg-query") is None:
        return False
    for pkg in PACKAGES:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or "install ok installed" not in proc.stdout:
            return False
    return True


def _is_debian() -> bool:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return False
    fields = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )
    ids = {fields.get("ID", "").strip('"')} | set(fields.get("ID_LIKE", "").strip('"').split())
    return "debian" in ids


def _apt_reachable(timeout: float = 60.0) -> tuple[bool, str]:
    """Whether apt can fetch its package lists (i.e. the Slurm packages can be installed)."""
    try:
        proc = subprocess.run(
            ["apt-get", "update", "-qq"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, f"'apt-get update' did not finish within {timeout:.0f}s"
    # apt-get update exits 0 even when some sources fail; failures show up as W:/E: lines.
    failed = [ln for ln in proc.stderr.splitlines() if ln.startswith(("E:", "Err:", "W: Failed"))]
    if proc.returncode != 0 or failed:
        detail = (failed or proc.stderr.strip().splitlines() or ["no output"])[-1]
        return False, f"apt package lists cannot be fetched: {detail}"
    proc = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", *PACKAGES],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return False, f"Slurm packages not available from apt: {proc.stderr.strip()}"
    return True, "apt reachable"


def slurm_available() -> tuple[bool, str]:
    """Can this machine run a live one-node test cluster? Returns (ok, reason).

    Needs: Linux, root, Debian (or derivative), .ci/slurm.sh, and either the Slurm/munge
    packages already installed or apt able to install them. Cheap when they are installed;
    otherwise it runs ``apt-get update`` once to check that apt is reachable.
    """
    if not sys.platform.startswith("linux"):
        return False, f"needs Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return False, "needs root (starts munged, slurmctld and slurmd)"
    if not _is_debian():
        return False, "needs Debian or a derivative (.ci/slurm.sh uses apt and Debian's packages)"
    if not SLURM_SH.is_file():
        return False, f"{SLURM_SH} is missing"
    if shutil.which("bash") is None:
        return False, "bash not found"
    if _packages_installed():
        return True, "Slurm and munge packages installed"
    if shutil.which("apt-get") is None:
        return False, "Slurm not installed and apt-get not found"
    return _apt_reachable()


def _run_slurm_sh(subcommand: str, timeout: float) -> None:
    proc = subprocess.run(
        ["bash", str(SLURM_SH), subcommand],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"'bash .ci/slurm.sh {subcommand}' failed with exit code {proc.returncode}:\n"
            f"{proc.stdout}{proc.stderr}"
        )


@contextlib.contextmanager
def live_cluster(install_timeout: float = 900.0, start_timeout: float = 120.0) -> Iterator[str]:
    """Install (if needed) and start the one-node cluster; stop it again on exit.

    Yields the name of the partition to submit to. ``stop`` runs in ``finally``, also when
    ``start`` itself failed halfway, so no daemon outlives the test.
    """
    _run_slurm_sh("install", install_timeout)
    try:
        _run_slurm_sh("start", start_timeout)
        yield TEST_PARTITION
    finally:
        _run_slurm_sh("stop", 120.0)
