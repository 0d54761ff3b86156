"""The stages of one experiment, each a plain function of the validated config: the one place each stage is.

`pipeline.api.Experiment` calls these (and the CLI calls the Experiment); tests and benchmarks call them directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import ExperimentConfig
from pipeline.data.demo import build_demo
from pipeline.data.manifest import manifest_and_summary, write_manifest
from pipeline.data.spoof import build_spoof, is_built
from pipeline.layout import RunLayout
from pipeline.run_config import save_run_config
from pipeline.run_lock import RunLock, lock_path

if TYPE_CHECKING:
    from pipeline.records import PreprocessSummary


def data_stage(config: ExperimentConfig) -> Path:
    """Build the dataset if its source is one the pipeline makes (demo, spoof), then write RUN_DIR/manifest.csv."""
    root = Path(config.data.root)
    if config.data.source == "demo" and not (root / "SOURCES.csv").exists():
        print(f"data: building the demo dataset in {root}", flush=True)
        build_demo(root, config.data.sample_rate, workers=config.preprocess.workers)
    elif config.data.source == "spoof" and not is_built(root):
        print(f"data: building the spoof dataset (natural vs synthetic speech) in {root}", flush=True)
        build_spoof(root, config.data.sample_rate, workers=config.preprocess.workers)
    rows, found = manifest_and_summary(config.data)
    manifest = RunLayout(config.run_dir).manifest
    write_manifest(rows, manifest)
    per_split = {s: sum(r.split == s for r in rows) for s in ("train", "val", "test")}
    speakers = {s: len({r.speaker for r in rows if r.split == s}) for s in ("train", "val", "test")}
    print(f"data: {len(rows)} source files in {len({r.label for r in rows})} classes, files per split "
          f"{per_split}, speakers per split {speakers} (split by {config.data.split.by}), "
          f"{found.duplicate_files} names share a recording with another ({found.duplicate_groups} recordings, "
          f"{found.conflicts} with differing label/speaker, split as one) -> {manifest}", flush=True)
    return manifest


def preprocess_stage(config: ExperimentConfig) -> PreprocessSummary:
    """Preprocess the run folder, holding its `preprocess.lock` (`pipeline.run_lock`): a second preprocessing of
    the same folder is refused before it touches anything.

    The lock is taken before the Dask cluster starts (a refused run submits no worker jobs), except under dask-mpi,
    where every MPI rank runs this and only the client rank comes out of `dask_executor`: it takes the lock there."""
    from pipeline.preprocess.cluster import dask_executor
    from pipeline.preprocess.run import preprocess

    layout = RunLayout(config.run_dir)
    lock = RunLock(lock_path(layout.root, "preprocess"), "preprocess", config.name)
    on_every_rank = config.preprocess.cluster == "mpi" and not config.preprocess.scheduler_file
    before, after = _one_of(lock, first=not on_every_rank)
    with before, dask_executor(config.preprocess, log_dir=layout.slurm.logs) as executor, after:
        summary = preprocess(config, executor)
    this_run = summary.runs[-1]
    print(f"preprocess: {summary.chunks} chunks from {summary.files} files; this run did {this_run.tasks} "
          f"of {summary.tasks} tasks ({this_run.chunks} chunks) in {this_run.seconds:.1f} s, "
          f"{summary.rejected_files} files rejected (reasons in {layout.features.rejects})", flush=True)
    return summary


def _one_of(lock: RunLock, first: bool) -> tuple[AbstractContextManager, AbstractContextManager]:
    """(`lock`, nothing) when it is to be taken first, else (nothing, `lock`)."""
    return (lock, nullcontext()) if first else (nullcontext(), lock)


def train_stage(config: ExperimentConfig, force: bool = False, configuration: str | None = None,
                launcher: str = "torchrun") -> list[Path]:
    """Train the sweep (or one configuration), then measure the all-reduce link it ran over (`_measure_link`)."""
    from pipeline.train.launch import train_all

    layout = RunLayout(config.run_dir)
    folders = train_all(config, layout.config, force=force, only=configuration, launcher=launcher)
    _measure_link(layout, launcher)
    return folders


def _measure_link(layout: RunLayout, launcher: str) -> None:
    """RUN_DIR/allreduce.json for the report's projection: the all-reduce at the world sizes above 1 that the run's
    configurations trained at, on their device (cuda when a CUDA configuration had more than one rank); an existing
    file is kept. Nothing when every configuration had one rank. Under srun the ranks spanned the allocation's nodes,
    so the measurement runs over the job's own tasks (`_measure_link_in_allocation`)."""
    seen: dict[str, set[int]] = {}
    for paths in layout.trainings():
        if paths.metrics.is_file():
            metrics = json.loads(paths.metrics.read_text())
            seen.setdefault(metrics["device"], set()).add(int(metrics["world_size"]))
    device = "cuda" if any(n > 1 for n in seen.get("cuda", ())) else "cpu"
    sizes = sorted(n for n in seen.get(device, ()) if n > 1)
    if not sizes:
        return
    if launcher == "srun":
        _measure_link_in_allocation(layout, device)
        return
    from pipeline.allreduce import measure_for_run

    measure_for_run(layout.root, device, sizes)


def _measure_link_in_allocation(layout: RunLayout, device: str) -> None:
    """Under srun: measure the all-reduce over this job's own tasks, which span its nodes as training's ranks did,
    unless allreduce.json already has a fit at this many ranks or more (the training job of the sweep's largest
    world size, whichever finishes last, leaves its link). A failure is a line in the log, never a failed job."""
    tasks = int(os.environ.get("SLURM_NTASKS", "1"))
    measured = _largest_fit(layout.allreduce)
    if tasks < 2 or measured >= tasks:
        return
    mine = layout.allreduce.with_name(f"{layout.allreduce.name}.{os.environ.get('SLURM_JOB_ID', os.getpid())}")
    command = ["srun", f"--ntasks={tasks}", "--kill-on-bad-exit=1", sys.executable, "-m", "pipeline", "bench",
               "--allreduce", "--quick", "--device", device, "--out", str(mine)]
    print(f"allreduce: measuring over this job's {tasks} tasks: {' '.join(command)}", flush=True)
    if subprocess.run(command).returncode or not mine.is_file():
        print("allreduce: not measured (the bench step failed, see above); the report assumes the link", flush=True)
    elif _largest_fit(layout.allreduce) < tasks:  # a job of more ranks may have finished meanwhile: keep its link
        os.replace(mine, layout.allreduce)
    mine.unlink(missing_ok=True)


def _largest_fit(path: Path) -> int:
    """`interconnect.largest_fit`, with a malformed file counting as none (this job's measurement replaces it)."""
    from pipeline.report.interconnect import largest_fit

    try:
        return largest_fit(path)
    except ValueError:
        return 0


def report_stage(run_dir: Path, other: Path | list[Path] | None = None, out: Path | None = None,
                 combine: bool = False) -> Path:
    """The scaling report of `run_dir`; given `other`, the comparison of the two runs instead (written to `out`), or
    with `combine`, one report of `run_dir` and the run folders `other` lists."""
    if combine:
        from pipeline.report.combine import write_combined

        others = other if isinstance(other, list) else [] if other is None else [other]
        path = write_combined([run_dir, *others], out)
    elif other is None:
        from pipeline.report.report import write_report

        path = write_report(run_dir)
    else:
        from pipeline.report.compare import write_comparison

        path = write_comparison(run_dir, other, out)
    print(f"report: {path}", flush=True)
    return path


def run_all(config: ExperimentConfig, force: bool = False) -> Path:
    started = time.perf_counter()
    save_run_config(config)
    data_stage(config)
    preprocess_stage(config)
    train_stage(config, force=force)
    path = report_stage(RunLayout(config.run_dir).root)
    print(f"run: done in {time.perf_counter() - started:.0f} s", flush=True)
    return path
