"""The real single-host SLURM cluster of slurm/local/start.sh, brought up once per session (idempotent)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """Start the local cluster (2 virtual nodes x 4 fake GPUs) unless it is up; it needs root to start."""
    if os.geteuid() != 0 and not _nodes_up():
        pytest.skip("the local SLURM cluster is not running and starting it needs root (slurm/local/start.sh)")
    result = subprocess.run(["bash", str(ROOT / "slurm/local/start.sh")], capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, f"slurm/local/start.sh failed:\n{result.stdout}\n{result.stderr}"
    assert _nodes_up() == 2


def _nodes_up() -> int:
    if not shutil.which("sinfo"):
        return 0
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, check=False).stdout
    return sum(line.split()[1] in ("idle", "mix", "alloc") for line in out.splitlines() if line.strip())


def wait_for(predicate, timeout: float, what: str, every: float = 1.0):
    """Poll `predicate` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
