"""Stopping cleanly when the cluster says so: SIGUSR1 or SIGUSR2 (sbatch `--signal=<slurm.signal>@90`) or SIGTERM
(scancel, preemption).

The handler only raises a flag; the training loop checks it between steps, all ranks agree through one tiny
all-reduce (a signal may reach only some ranks), and then they checkpoint together and exit. On the requeue signal
(`slurm.signal`, USR1 by default) inside a SLURM job, rank 0 also requeues the job, which restarts it from that
checkpoint; where `scontrol` is missing (inside a container) the batch script does (`slurm.requeue_by: script`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from types import FrameType
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pipeline.train.backend import Backend

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
REQUEUE_SIGNALS = {"USR1": signal.SIGUSR1, "USR2": signal.SIGUSR2}
"""`slurm.signal` -> the signal it names."""


class StopFlag:
    """Records the first stop signal received by this process."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.requeue_signal = signal.SIGUSR1
        """SLURM's advance warning before the time limit (`slurm.signal`): the job requeues. The other stop
        signals only checkpoint."""

    def use_config(self, slurm_signal: str) -> None:
        """Requeue on the signal `slurm.signal` names (`USR1` or `USR2`); every stop signal is caught already."""
        self.requeue_signal = REQUEUE_SIGNALS[slurm_signal]

    def requeues(self, stop_signal: int | None) -> bool:
        """Whether stopping on `stop_signal` should requeue the job."""
        return stop_signal is not None and stop_signal == self.requeue_signal

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signum

    def agreed(self, backend: Backend, device: torch.device) -> int | None:
        """The stop signal if any rank received one (same answer on every rank), else None."""
        flag = torch.tensor([self.signal or 0], dtype=torch.int32, device=device)
        backend.all_reduce(flag, op="max")
        return int(flag.item()) or None


def requeue_slurm_job() -> str | None:
    """`scontrol requeue` this SLURM job; returns what happened, or None outside SLURM."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    if shutil.which("scontrol") is None:
        return (f"scontrol is not on PATH here (inside a container?): job {job} not requeued; with "
                "slurm.requeue_by: script the batch script requeues it")
    # An array task's own id is SLURM_ARRAY_JOB_ID_SLURM_ARRAY_TASK_ID; requeueing SLURM_JOB_ID targets it.
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return f"scontrol requeue {job} failed: {result.stderr.strip()}"
    return f"requeued SLURM job {job}"
