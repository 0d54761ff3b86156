"""`pipeline submit`: a whole experiment as dependent jobs. Preprocessing first; one training job per configuration
(per repeat with train.repeats) once it succeeded; the report once every training job has ended, however it ended
(`afterany`), so a failed configuration still gets a report that names it.

With plain sbatch rather than submitit: the scripts are the same a person submits by hand, which is what users
read, diff and keep next to their results. Without SLURM the same scripts run here, one after the other.

The Python API has a second way in, `Experiment.submit_with_submitit` (`pipeline.slurm.submitit_jobs`): the same
jobs, resources and dependencies, each a pickled callable that runs the stage, for a notebook or a script that wants
job handles (`.result()`, `.cancel()`, `.stdout()`) rather than files, or submitit's local and debug executors on a
laptop. Both record their jobs in RUN_DIR/slurm/jobs.json, so `pipeline status` and the report read either; the
sbatch path stays the default of `pipeline submit` because its scripts can be read and submitted without Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.config import ExperimentConfig
from pipeline.io import atomic_write_text
from pipeline.layout import RunLayout
from pipeline.run_config import save_run_config
from pipeline.slurm import jobs
from pipeline.slurm.jobs import JobRecord
from pipeline.slurm.scripts import JobScript, experiment_scripts


def write_scripts(config: ExperimentConfig) -> list[tuple[JobScript, Path]]:
    """Save the resolved config and every job script under RUN_DIR/slurm/."""
    layout = RunLayout(config.run_dir)
    save_run_config(config)
    python = config.slurm.python or sys.executable
    written = []
    for script in experiment_scripts(config, layout.config, python):
        path = layout.slurm.script(script.name)
        atomic_write_text(path, script.text)
        written.append((script, path))
    layout.slurm.logs.mkdir(parents=True, exist_ok=True)
    return written


def submit(config: ExperimentConfig, dry_run: bool = False, local: bool = False) -> list[JobRecord]:
    scripts = write_scripts(config)
    if dry_run:
        for script, path in scripts:
            print(f"# ==> {path} <==\n{script.text}")
        return []
    if local or not shutil.which("sbatch"):
        return _run_locally(Path(config.run_dir), scripts)
    return _submit_to_slurm(Path(config.run_dir), scripts)


def _submit_to_slurm(run_dir: Path, scripts: list[tuple[JobScript, Path]]) -> list[JobRecord]:
    records: list[JobRecord] = []
    try:
        preprocess = _sbatch(scripts[0][1], None)
        records.append(_record(scripts[0], preprocess))
        trains = []
        for item in scripts[1:-1]:
            trains.append(_sbatch(item[1], f"afterok:{preprocess}"))
            records.append(_record(item, trains[-1]))
        report = _sbatch(scripts[-1][1], "afterany:" + ":".join(trains or [preprocess]))
        records.append(_record(scripts[-1], report))
    except subprocess.CalledProcessError as err:
        # Half an experiment in the queue is worse than none: take back what was submitted.
        if records:
            subprocess.run(["scancel", *(r.job_id for r in records)], check=False)
        raise RuntimeError(f"sbatch {err.cmd[-1]} failed: {err.stderr.strip()}") from err
    finally:
        if records:
            jobs.save(run_dir, "slurm", records)
    for record in records:
        label = f"{record.stage} {record.configuration or ''}".strip()
        print(f"submit: job {record.job_id}: {label} (log {record.log.replace('%j', record.job_id)})")
    print(f"submit: {len(records)} jobs; `pipeline status {run_dir}` shows their states")
    return records


def _sbatch(script: Path, dependency: str | None) -> str:
    command = ["sbatch", "--parsable"]
    if dependency:
        command += [f"--dependency={dependency}", "--kill-on-invalid-dep=yes"]
    result = subprocess.run([*command, str(script)], capture_output=True, text=True, check=True)
    return result.stdout.strip().split(";")[0]


def _record(item: tuple[JobScript, Path], job_id: str) -> JobRecord:
    script, path = item
    return JobRecord(script.stage, script.configuration, job_id, str(path), script.log)


def _run_locally(run_dir: Path, scripts: list[tuple[JobScript, Path]]) -> list[JobRecord]:
    """Run the scripts here in order with the same dependencies: no training without features, always a report."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    records: list[JobRecord] = []
    preprocess_ok = True
    for script, path in scripts:
        record = _record((script, path), "local")
        if script.stage == "train" and not preprocess_ok:
            record.state, record.exit_code = "NOT_RUN", None
        else:
            log = Path(script.log.replace("%j", "local"))
            print(f"submit: running {script.name} locally (log {log})", flush=True)
            with open(log, "a") as out:
                code = subprocess.run(["bash", str(path)], env=env, stdout=out, stderr=subprocess.STDOUT).returncode
            record.state, record.exit_code = ("COMPLETED" if code == 0 else "FAILED"), code
            preprocess_ok = preprocess_ok and not (script.stage == "preprocess" and code != 0)
        records.append(record)
        jobs.save(run_dir, "local", records)
    failed = [r for r in records if r.state != "COMPLETED"]
    print(f"submit: ran {len(records)} jobs locally, {len(failed)} did not complete; `pipeline status {run_dir}`")
    return records
