"""A real single-node SLURM for the tests: munged + slurmctld + slurmd with all state in a temp directory.

`slurm_cluster` (session-scoped fixture) starts the daemons through scripts/slurm_local.sh, points clients at
them (SLURM_CONF), and stops them by their PIDs at the end of the session. Without SLURM installed, the tests
that use it are skipped with a reason that says how to install it (CI installs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "slurm_local.sh"
INSTALL = "apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge"


def slurm_missing() -> str | None:
    missing = [tool for tool in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol") if shutil.which(tool) is None]
    return f"SLURM is not installed (missing {', '.join(missing)}); install it with: {INSTALL}" if missing else None


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    reason = slurm_missing()
    if reason:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", str(SCRIPT), "start", str(directory)], capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "stop", str(directory)], capture_output=True, timeout=60)
        logs = "\n".join(p.read_text()[-1500:] for p in sorted((directory / "log").glob("*")) if p.is_file())
        pytest.fail(f"could not start the local SLURM: {started.stderr}\n{logs}")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(directory / "slurm.conf")
    try:
        yield directory
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(directory)], capture_output=True, timeout=60)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


def job_state(job_id: str) -> str | None:
    """The job's state from squeue, or None once it has left the queue."""
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    state = out.stdout.strip()
    return state or None


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
