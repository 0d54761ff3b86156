"""The stages of one experiment, each a plain function of the validated config: the one place each stage is.

`pipeline.api.Experiment` calls these (and the CLI calls the Experiment); tests and benchmarks call them directly.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import ExperimentConfig, save_config
from pipeline.data.demo import build_demo
from pipeline.data.manifest import manifest_and_summary, write_manifest
from pipeline.data.spoof import build_spoof, is_built
from pipeline.layout import RunLayout
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
    from pipeline.train.launch import train_all

    return train_all(config, RunLayout(config.run_dir).config, force=force, only=configuration, launcher=launcher)


def report_stage(run_dir: Path, other: Path | None = None, out: Path | None = None) -> Path:
    """The scaling report of `run_dir`; given `other`, the comparison of the two runs instead (written to `out`)."""
    if other is None:
        from pipeline.report.report import write_report

        path = write_report(run_dir)
    else:
        from pipeline.report.compare import write_comparison

        path = write_comparison(run_dir, other, out)
    print(f"report: {path}", flush=True)
    return path


def run_all(config: ExperimentConfig, force: bool = False) -> Path:
    started = time.perf_counter()
    save_config(config, RunLayout(config.run_dir).config)
    data_stage(config)
    preprocess_stage(config)
    train_stage(config, force=force)
    path = report_stage(RunLayout(config.run_dir).root)
    print(f"run: done in {time.perf_counter() - started:.0f} s", flush=True)
    return path
