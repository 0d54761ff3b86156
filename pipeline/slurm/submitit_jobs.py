"""The jobs of `pipeline submit`, through submitit: for a notebook or a script that wants job handles.

The same jobs as the sbatch path (`scripts.experiment_jobs`): the preprocess job, one training job per run of the
sweep once it succeeded (`afterok`), the report once every training job ended (`afterany`), with the same
resources, time limits, partition, account, memory and extra options. What each job runs is a small picklable
callable that loads the run's config.yaml in the job and calls the stage:

- `PreprocessJob` runs the generated preprocess script (RUN_DIR/slurm/scripts/preprocess.sbatch) with bash, which
  starts the Dask cluster across the allocation exactly as the sbatch job does;
- `TrainJob` is `pipeline train --configuration NAME --launcher srun` (`stages.train_stage`): it runs once on the
  first node (`use_srun=False`) and starts one srun task per rank, like train.sbatch;
- `ReportJob` is `pipeline report RUN_DIR` (`stages.report_stage`).

They call `pipeline.stages`, not `pipeline.api`, which imports this module: the API sits above the executors.

Requeue is what `pipeline submit` does: `--signal=<slurm.signal>@slurm.signal_seconds` reaches the ranks, which
checkpoint, and rank 0 requeues the job (`train.requeue`, with `--requeue`; with `slurm.requeue_by: script` this
job's process does, `requeue_here`). The callable then exits without a result, so the
job handle waits for the requeued run, which runs the same callable again and resumes from the checkpoint.
`TrainJob` is a `submitit.helpers.Checkpointable` too: if submitit's own signal reaches it (USR2), `checkpoint()`
resubmits it unchanged, and the new run resumes from the last checkpoint.

submitit's files (pickles, the submission script, one log per job, stdout and stderr together) are under
RUN_DIR/slurm/submitit/<job id>/, and the jobs are recorded in RUN_DIR/slurm/jobs.json like the sbatch path's, so
`pipeline status` and the report see them. submitit's `local` and `debug` executors run the jobs on this machine,
one after the other with the same dependencies (no training without features, always a report).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from pipeline.config import ExperimentConfig, load_experiment, slurm_time_seconds
from pipeline.layout import RunLayout
from pipeline.slurm import jobs
from pipeline.slurm.jobs import JobRecord
from pipeline.slurm.scripts import Job, experiment_jobs, job_name, shared_options
from pipeline.slurm.submit import write_scripts

CLUSTERS = ("slurm", "local", "debug")
"""submitit's executors: `slurm`, `local` (subprocesses here), `debug` (in this process)."""
EXIT_INTERRUPTED = 75
"""Exit status of a training job that stopped after checkpointing (as `pipeline train` exits)."""


def submitit_folder(layout: RunLayout) -> Path:
    """submitit's files of one job: RUN_DIR/slurm/submitit/<job id>/."""
    return layout.slurm.submitit / "%j"


@dataclass
class PreprocessJob:
    """The preprocess job: the generated preprocess script (data manifest, Dask cluster, `pipeline preprocess`)."""

    config: str
    """RUN_DIR/config.yaml."""

    def __call__(self) -> Path:
        """features/summary.json of the run."""
        layout = RunLayout(_run_dir(self.config))
        env = os.environ if "SLURM_JOB_ID" in os.environ else \
            {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        code = subprocess.run(["bash", str(layout.slurm.script("preprocess"))], env=env, check=False).returncode
        if code != 0:
            raise RuntimeError(f"preprocess: {layout.slurm.script('preprocess')} exited with {code}")
        return layout.features.summary


@dataclass
class TrainJob(Checkpointable):
    """One training run of the sweep; resumes from its last checkpoint when it runs again."""

    config: str
    configuration: str
    launcher: str = "srun"

    def __call__(self) -> Path:
        from pipeline import stages
        from pipeline.train.interrupt import TrainingInterrupted

        config = load_experiment(self.config)
        try:
            stages.train_stage(config, configuration=self.configuration, launcher=self.launcher)
        except TrainingInterrupted as err:
            if not requeued() and not requeue_here(config):
                raise
            # No result: the handle waits for the requeued run, which calls this again and resumes.
            print(f"{err} SLURM requeued the job; it resumes from that checkpoint", flush=True)
            raise SystemExit(EXIT_INTERRUPTED) from None
        return RunLayout(config.run_dir).training(self.configuration).metrics

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Resubmit unchanged: `pipeline train` resumes from the run's last checkpoint."""
        print(f"train: {self.configuration}: submitit checkpoint, resubmitting", flush=True)
        return DelayedSubmission(self, *args, **kwargs)


@dataclass
class ReportJob:
    """The scaling report of the run, including the training jobs that ended without metrics."""

    config: str

    def __call__(self) -> Path:
        from pipeline import stages

        return stages.report_stage(Path(load_experiment(self.config).run_dir))


def requeued() -> bool:
    """Whether SLURM requeued the job this runs in since it started (rank 0 does on the USR1 warning)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    shown = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, check=False)
    restarts = re.search(r"\bRestarts=(\d+)", shown.stdout)
    return bool(restarts) and int(restarts[1]) > int(os.environ.get("SLURM_RESTART_COUNT", 0))


def requeue_here(config: ExperimentConfig) -> bool:
    """With `slurm.requeue_by: script` the ranks leave the requeue to the job: `scontrol requeue` it from here (the
    submitit process); whether that worked."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job or config.slurm.requeue_by != "script" or not config.train.requeue or not shutil.which("scontrol"):
        return False
    return subprocess.run(["scontrol", "requeue", job], check=False).returncode == 0


@dataclass
class SubmittedJobs:
    """The submitit jobs of one experiment: handles to wait on (`.result()`), cancel or read (`.stdout()`)."""

    preprocess: submitit.Job
    train: dict[str, submitit.Job]
    """Run name -> its training job (missing where the local executors did not run it)."""
    report: submitit.Job
    records: list[JobRecord] = field(default_factory=list)
    """What RUN_DIR/slurm/jobs.json says about them."""

    @property
    def all(self) -> list[submitit.Job]:
        return [self.preprocess, *self.train.values(), self.report]

    def wait(self) -> Path:
        """Wait for every job; the report's path (the report runs however training ended)."""
        for job in self.all[:-1]:
            job.exception()
        return self.report.result()


def submit(config: ExperimentConfig, cluster: str = "slurm") -> SubmittedJobs:
    """Write the scripts and config.yaml, then submit every job of the experiment through submitit's `cluster`."""
    if cluster not in CLUSTERS:
        raise ValueError(f"submitit executor {cluster!r}: expected one of {', '.join(CLUSTERS)}")
    write_scripts(config)
    layout = RunLayout(config.run_dir)
    planned = experiment_jobs(config)
    callables = [_callable(config, job, "srun" if cluster == "slurm" else "torchrun") for job in planned]
    if cluster == "slurm":
        return _submit_to_slurm(config, layout, planned, callables)
    return _run_here(config, layout, planned, callables, cluster)


def _callable(config: ExperimentConfig, job: Job, launcher: str) -> Any:
    path = str(RunLayout(config.run_dir).config)
    if job.stage == "train":
        return TrainJob(path, str(job.configuration), launcher)
    return PreprocessJob(path) if job.stage == "preprocess" else ReportJob(path)


def _submit_to_slurm(config: ExperimentConfig, layout: RunLayout, planned: list[Job], callables: list) -> SubmittedJobs:
    handles: list[submitit.Job] = []
    records: list[JobRecord] = []
    try:
        for job, function in zip(planned, callables, strict=True):
            trains = [h.job_id for h, j in zip(handles, planned, strict=False) if j.stage == "train"]
            dependency = {"preprocess": None, "train": f"afterok:{handles[0].job_id}" if handles else None,
                          "report": "afterany:" + ":".join(trains or [h.job_id for h in handles[:1]])}[job.stage]
            # One process runs the callable (no srun around it), so the job's handle is its task 0.
            handles.append(executor(config, layout, job, "slurm", dependency).submit(function).task(0))
            records.append(_record(job, handles[-1]))
    except Exception:
        for handle in handles:  # half an experiment in the queue is worse than none
            handle.cancel(check=False)
        raise
    finally:
        if records:
            jobs.save(layout.root, "slurm", records)
    for record in records:
        label = f"{record.stage} {record.configuration or ''}".strip()
        print(f"submit: job {record.job_id}: {label} via submitit (log {record.log})")
    print(f"submit: {len(records)} jobs; `pipeline status {layout.root}` shows their states")
    return _submitted(planned, handles, records)


def _run_here(config: ExperimentConfig, layout: RunLayout, planned: list[Job], callables: list,
              cluster: str) -> SubmittedJobs:
    """The jobs one after the other on this machine, with the dependencies of the SLURM path."""
    handles: list[submitit.Job] = []
    records: list[JobRecord] = []
    preprocess_ok = True
    for job, function in zip(planned, callables, strict=True):
        if job.stage == "train" and not preprocess_ok:
            records.append(JobRecord(job.stage, job.configuration, "local", "", "", "NOT_RUN", None))
        else:
            print(f"submit: running {job.name} with submitit's {cluster} executor", flush=True)
            handle = executor(config, layout, job, cluster, None).submit(function)
            error = handle.exception()  # waits (the debug executor runs it now, in this process)
            handles.append(handle)
            records.append(_record(job, handle, "FAILED" if error else "COMPLETED", 1 if error else 0))
            preprocess_ok = preprocess_ok and not (job.stage == "preprocess" and error)
        jobs.save(layout.root, "local", records)
    failed = [r for r in records if r.state != "COMPLETED"]
    print(f"submit: ran {len(records)} jobs here, {len(failed)} did not complete; `pipeline status {layout.root}`")
    return _submitted(planned, handles, records)


def _submitted(planned: list[Job], handles: list, records: list[JobRecord]) -> SubmittedJobs:
    ran = [job for job, record in zip(planned, records, strict=True) if record.state != "NOT_RUN"]
    by_job = dict(zip((job.name for job in ran), handles, strict=True))
    train = {job.configuration: by_job[job.name] for job in ran if job.stage == "train"}
    return SubmittedJobs(by_job["preprocess"], train, by_job["report"], records)


def _record(job: Job, handle: submitit.Job, state: str | None = None, exit_code: int | None = None) -> JobRecord:
    return JobRecord(job.stage, job.configuration, str(handle.job_id), str(handle.paths.submission_file),
                     str(handle.paths.stdout), state, exit_code)


def executor(config: ExperimentConfig, layout: RunLayout, job: Job, cluster: str,
             dependency: str | None) -> submitit.AutoExecutor:
    """A submitit executor for one job, with the resources of its sbatch script."""
    python = shlex.quote(config.slurm.python or sys.executable) if cluster == "slurm" else None
    made = submitit.AutoExecutor(submitit_folder(layout), cluster=cluster,
                                 **({"slurm_python": python} if python else {}))
    made.update_parameters(**parameters(config, job, cluster, dependency))
    return made


def parameters(config: ExperimentConfig, job: Job, cluster: str, dependency: str | None = None) -> dict[str, Any]:
    """submitit's parameters of one job: its #SBATCH options on SLURM; elsewhere one process, which starts its own
    ranks or workers (torchrun, a local Dask cluster)."""
    resources = job.resources
    params: dict[str, Any] = {"name": job_name(config, job), "timeout_min": time_minutes(resources.time)}
    if cluster != "slurm":
        return params
    extra: dict[str, Any] = {"time": resources.time}  # the script's own text; timeout_min is submitit's countdown
    for option in shared_options(config) + resources.options()[3:]:  # after nodes, tasks, CPUs (named below)
        key, sep, value = option.removeprefix("--").partition("=")
        extra[key] = value if sep else True
    extra.pop("gres", None)
    if dependency:
        extra["kill-on-invalid-dep"] = "yes"
    params.update(nodes=resources.nodes, tasks_per_node=resources.ntasks_per_node,
                  cpus_per_task=resources.cpus_per_task, slurm_use_srun=False, slurm_stderr_to_stdout=True,
                  slurm_additional_parameters=extra)
    if resources.signal_seconds is None:  # submitit's own warning (USR2) would end the preprocess job's workers
        params["slurm_signal_delay_s"] = 0
    if resources.gpus_per_node and resources.gpu_request == "gres":  # the other forms are in `extra`
        params["slurm_gres"] = f"gpu:{resources.gpus_per_node}"
    if config.slurm.setup:  # after submitit's #SBATCH lines, before its srun/python line, verbatim like ours
        params["slurm_setup"] = list(config.slurm.setup)
    if dependency:
        params["slurm_dependency"] = dependency
    return params


def time_minutes(text: str) -> int:
    """Whole minutes (rounded up) of a SLURM time limit, which config loading has already checked."""
    return max(1, -(-slurm_time_seconds(text) // 60))


def _run_dir(config_path: str) -> str:
    return load_experiment(config_path).run_dir
