"""Stopping cleanly when the cluster says so: SIGUSR1 (sbatch `--signal=USR1@90`) or SIGTERM (scancel, preemption).

The handler only raises a flag; the training loop checks it between steps, all ranks agree through one tiny
all-reduce (a signal may reach only some ranks), and then they checkpoint together and exit. On SIGUSR1 inside a
SLURM job, rank 0 also requeues the job, which restarts it from that checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
from types import FrameType
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pipeline.train.backend import DDPBackend

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopFlag:
    """Records the first stop signal received by this process."""

    REQUEUE_SIGNAL = signal.SIGUSR1
    """SLURM's advance warning before the time limit: the job requeues itself. SIGTERM only checkpoints."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signum

    def agreed(self, backend: DDPBackend, device: torch.device) -> int | None:
        """The stop signal if any rank received one (same answer on every rank), else None."""
        flag = torch.tensor([self.signal or 0], dtype=torch.int32, device=device)
        backend.all_reduce(flag, op="max")
        return int(flag.item()) or None


def requeue_slurm_job() -> str | None:
    """`scontrol requeue` this SLURM job; returns what happened, or None outside SLURM."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    # An array task's own id is SLURM_ARRAY_JOB_ID_SLURM_ARRAY_TASK_ID; requeueing SLURM_JOB_ID targets it.
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return f"scontrol requeue {job} failed: {result.stderr.strip()}"
    return f"requeued SLURM job {job}"
