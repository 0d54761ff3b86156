"""The jobs of a submitted experiment, recorded in RUN_DIR/slurm/jobs.json, and their states from SLURM.

States come from squeue while a job is in the queue and from sacct once it has left (sacct needs accounting,
which most clusters have); a job neither knows is reported as such rather than guessed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.io import atomic_write_json
from pipeline.layout import RunLayout

FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
            "PREEMPTED"}


@dataclass
class JobRecord:
    stage: str
    """`preprocess`, `train` or `report`."""
    configuration: str | None
    """The training configuration of a train job."""
    job_id: str
    """SLURM job id, or `local` when the stages ran without SLURM (a process id with submitit's local executor)."""
    script: str
    """The sbatch script that was submitted (submitit's own, for jobs of `Experiment.submit_with_submitit`)."""
    log: str
    """Its output file (`%j` stands for the job id)."""
    state: str | None = None
    """Final state of a local run (SLURM jobs are looked up instead)."""
    exit_code: int | None = None
    """Exit status of a local run."""


def jobs_file(run_dir: Path) -> Path:
    return RunLayout(run_dir).slurm.jobs


def save(run_dir: Path, executor: str, records: list[JobRecord]) -> None:
    atomic_write_json(jobs_file(run_dir), {"executor": executor, "jobs": [asdict(r) for r in records]})


def load(run_dir: Path) -> tuple[str, list[JobRecord]]:
    path = jobs_file(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no submitted jobs here; `pipeline submit CONFIG` writes it")
    data = json.loads(path.read_text())
    return data["executor"], [JobRecord(**job) for job in data["jobs"]]


def states(records: list[JobRecord]) -> list[tuple[str, str]]:
    """(state, detail) of each record: squeue's reason while queued, sacct's exit code and elapsed time after."""
    ids = [r.job_id for r in records if r.state is None]
    found: dict[str, tuple[str, str]] = {}
    if ids and shutil.which("squeue"):
        for line in _lines(["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T|%r"]):
            job, state, reason = line.split("|", 2)
            found[job] = (state, "" if reason == "None" else reason)
    rest = [i for i in ids if i not in found]
    if rest and shutil.which("sacct"):
        for line in _lines(["sacct", "-n", "-P", "-X", "-j", ",".join(rest), "-o", "JobIDRaw,State,ExitCode,Elapsed"]):
            job, state, exit_code, elapsed = line.split("|")
            found[job] = (state.split()[0], f"exit {exit_code}, {elapsed}")
    return [(r.state, f"exit {r.exit_code}") if r.state is not None
            else found.get(r.job_id, ("UNKNOWN", "not in squeue or sacct")) for r in records]


def status_table(run_dir: Path) -> list[dict]:
    """One row per job: stage, configuration, job id, state, detail, log."""
    _, records = load(run_dir)
    return [{"stage": r.stage, "configuration": r.configuration or "", "job": r.job_id, "state": state,
             "detail": detail, "log": r.log.replace("%j", r.job_id)}
            for r, (state, detail) in zip(records, states(records), strict=True)]


def cancel(run_dir: Path) -> list[str]:
    """scancel every job of the run that has not finished; returns their ids."""
    executor, records = load(run_dir)
    if executor != "slurm":
        raise RuntimeError(f"{jobs_file(run_dir)}: these stages ran locally, there is nothing to cancel")
    live = [r.job_id for r, (state, _) in zip(records, states(records), strict=True) if state not in FINISHED]
    if live:
        subprocess.run(["scancel", *live], check=True, capture_output=True, text=True)
    return live


def unfinished_configurations(run_dir: Path) -> list[dict]:
    """Submitted training configurations without metrics.json, with what SLURM says happened to them."""
    try:
        _, records = load(run_dir)
    except FileNotFoundError:
        return []
    layout = RunLayout(run_dir)
    train = [r for r in records if r.stage == "train" and not layout.training(str(r.configuration)).metrics.exists()]
    return [{"name": r.configuration, "reason": f"job {r.job_id} ended {state} without metrics ({detail}); "
             f"log {r.log.replace('%j', r.job_id)}"} for r, (state, detail) in zip(train, states(train), strict=True)]


def _lines(command: list[str]) -> list[str]:
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    return [line for line in result.stdout.splitlines() if line.strip()]
