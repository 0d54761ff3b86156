"""The preprocessing stage: split the manifest into tasks, run them on an executor, merge their shards' index.

`preprocess` takes any `concurrent.futures.Executor`: a Dask client's executor on a cluster, a process pool, or
None to run serially in the calling process (tests, debugging).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Executor, as_completed
from pathlib import Path

import numpy as np

from pipeline.config import ExperimentConfig, PreprocessConfig
from pipeline.data.manifest import read_manifest
from pipeline.data.sources import SourceFile, data_root, source_path
from pipeline.io import atomic_write_csv, atomic_write_json
from pipeline.layout import FeaturePaths, RunLayout
from pipeline.preprocess import image_shards, shards
from pipeline.preprocess.gallery import write_galleries
from pipeline.preprocess.gpus import check_pool
from pipeline.preprocess.params import check_or_record
from pipeline.preprocess.progress import Progress
from pipeline.preprocess.shards import TaskSummary
from pipeline.preprocess.task import CHUNK_WAVS, Task, run_task
from pipeline.records import PreprocessRun, PreprocessSummary

TASK_ORDER_SALT = b"pipeline.preprocess.make_tasks/v1"
"""Salt of the digest that orders the files over tasks: a constant, so that every machine and every rerun cuts the
same tasks out of the same manifest (changing it changes every shard)."""


def make_tasks(files: list[SourceFile], files_per_task: int, task_megabytes: float = float("inf"),
               root: str | Path | None = None) -> list[Task]:
    """At most `files_per_task` files and `task_megabytes` of input per task (a file larger than that is a task of
    its own), taken in a fixed shuffled order: shuffle before sharding, as WebDataset recommends. Manifests are
    sorted by label, so slices of the manifest would give each shard one class, and a trainer that reads shard by
    shard (as one reads tars) would see one class at a time; shuffled, every shard mixes the classes in about their
    proportions. Sizes are the files' sizes on disk under the data `root` (a missing file counts 0: it becomes a
    reject), so cutting needs one stat per file and no decoding.

    The order is that of a salted SHA-256 of each file's path (relative to the data root), not of `random`, whose
    shuffle Python does not promise to keep across versions: resuming on another machine or Python must cut the
    same tasks, or complete shards would hold the files of other tasks.
    """
    ordered = sorted(files, key=lambda f: hashlib.sha256(TASK_ORDER_SALT + f.path.encode()).digest())
    limit = task_megabytes * 1e6
    tasks: list[Task] = []
    batch: list[SourceFile] = []
    size = 0
    for source, nbytes in zip(ordered, (_file_size(root, f) for f in ordered), strict=True):
        if batch and (len(batch) == files_per_task or size + nbytes > limit):
            tasks.append(Task(len(tasks), tuple(batch), size))
            batch, size = [], 0
        batch.append(source)
        size += nbytes
    if batch:
        tasks.append(Task(len(tasks), tuple(batch), size))
    return tasks


def _file_size(root: str | Path | None, source: SourceFile) -> int:
    if root is None:
        return 0
    try:
        return source_path(str(root), source.path).stat().st_size
    except OSError:
        return 0


def preprocess(config: ExperimentConfig, executor: Executor | None = None) -> PreprocessSummary:
    """Run every incomplete task, then write features/index.csv, stats.json, labels.json, rejects.csv and
    summary.json; returns that summary."""
    layout = RunLayout(config.run_dir)
    features = layout.features
    features.folder.mkdir(parents=True, exist_ok=True)
    if not layout.manifest.is_file():
        raise FileNotFoundError(f"{layout.manifest}: no manifest yet; run `pipeline data manifest CONFIG` first")
    check_or_record(config)
    check_pool(executor, config.preprocess.device)
    _remove_partial(layout)
    root = str(data_root(config.data).absolute())  # here, so that workers started elsewhere find the data
    tasks = make_tasks(read_manifest(layout.manifest), config.preprocess.files_per_task,
                       config.preprocess.task_megabytes, root)
    complete = {task.task_id for task in tasks if shards.is_complete(features.folder, task.task_id)}
    pending = [task for task in tasks if task.task_id not in complete]
    print(f"preprocess: {len(tasks)} tasks, {len(complete)} already complete, running {len(pending)}",
          file=sys.stderr, flush=True)
    started = time.perf_counter()
    progress = Progress(len(tasks), skipped=len(complete))
    workers = _worker_count(executor)
    try:
        summaries = [shards.read_summary(features.folder, task_id) for task_id in sorted(complete)]
        args = (config.preprocess, config.data.sample_rate, str(layout.root), root)
        with _ctrl_c_kept() as pressed:
            for summary in _run(pending, args, executor, progress):
                summaries.append(summary)
                workers = max(workers, _worker_count(executor))
                if pressed.is_set():
                    raise KeyboardInterrupt
            if pressed.is_set():
                raise KeyboardInterrupt
    finally:
        progress.close()
    _remove_partial(layout)  # what attempts on workers that died left behind
    done_now = [s for s in summaries if s.task_id not in complete]
    summaries.sort(key=lambda s: s.task_id)
    summary, index = _write_index(features, summaries)
    write_galleries(layout.root, index, config.preprocess.hop_length, config.data.sample_rate)
    _record_storage(summary, layout, config.preprocess)
    this_run = PreprocessRun(tasks=len(done_now), chunks=sum(s.chunks for s in done_now),
                             seconds=round(time.perf_counter() - started, 3), workers=workers,
                             finished_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    summary.runs = [*_earlier_runs(features), this_run]
    summary.tasks_without_record = max(0, len(tasks) - sum(r.tasks for r in summary.runs))
    summary.write(features.summary)
    return summary


def _remove_partial(layout: RunLayout) -> None:
    """Temporary shard folders and tars of attempts whose worker died; only while no task of the run runs."""
    shards.remove_partial(layout.features.folder)
    image_shards.remove_partial(layout.images)


def _record_storage(summary: PreprocessSummary, layout: RunLayout, pre: PreprocessConfig) -> None:
    """What the run folder holds for a file system, measured on disk (so a rerun measures the same): files written
    by preprocessing (features, images, gallery, chunk wavs; summary.json counted before it is written), per 1,000
    chunks, and the sizes of feature shard folders and image tars."""
    run = layout.root
    files = sum(len(names) for folder in (layout.features.folder, layout.images, layout.gallery, run / CHUNK_WAVS)
                for _, _, names in os.walk(folder))
    summary.files_written = files + (not layout.features.summary.is_file())
    summary.files_per_1000_chunks = round(1000 * summary.files_written / summary.chunks, 1) if summary.chunks else None
    folders = sorted(p for p in layout.features.folder.glob("shard-*") if p.is_dir())
    summary.feature_shard_bytes = _sizes([sum(f.stat().st_size for f in p.iterdir() if f.is_file()) for p in folders])
    summary.image_shard_bytes = _sizes([p.stat().st_size for p in sorted(layout.images.glob("*/shard-*.tar"))])
    summary.image_layout = pre.image_layout if pre.images else "none"


def _sizes(sizes: list[int]) -> dict[str, int] | None:
    return {"mean": round(sum(sizes) / len(sizes)), "max": max(sizes)} if sizes else None


def _earlier_runs(features: FeaturePaths) -> list[PreprocessRun]:
    """The runs recorded by the summary of an earlier run of this features folder.

    A run's time is a throughput only for the tasks that run did, so every run is kept with its own tasks, chunks,
    seconds and workers; a rerun that found every shard complete is recorded with 0 tasks. A run that stopped
    before writing its summary leaves its tasks unrecorded (`tasks_without_record`).
    """
    return PreprocessSummary.read(features.summary).runs if features.summary.is_file() else []


def _run(tasks: list[Task], args: tuple, executor: Executor | None, progress: Progress) -> Iterator[TaskSummary]:
    """The summaries of `tasks` in the order they finish: serially here without an executor, else all submitted at
    once (a task whose worker dies is redone by Dask; one that raises is retried by the executor)."""
    if executor is None:
        results = (run_task(task, *args) for task in tasks)
    elif hasattr(executor, "submit_task"):  # GPU workers: decode on CPU workers, features on GPU ones
        results = (f.result() for f in as_completed([executor.submit_task(task, *args) for task in tasks]))
    else:
        results = (f.result() for f in as_completed([executor.submit(run_task, task, *args) for task in tasks]))
    for summary in results:
        progress.update(summary.chunks)
        yield summary


@contextlib.contextmanager
def _ctrl_c_kept() -> Iterator[threading.Event]:
    """A flag that Ctrl-C sets besides raising KeyboardInterrupt, for the loop to check after every task.

    SIGINT raises KeyboardInterrupt wherever the main thread is, and where that is a `__del__` (a Dask Future
    releasing its key, which happens often while results arrive) Python prints "Exception ignored" and goes on:
    the Ctrl-C would be lost and the run would carry on to the end."""
    pressed = threading.Event()
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous in (signal.SIG_IGN, None):
        yield pressed
        return

    def handler(signum: int, frame: object) -> None:
        pressed.set()
        if callable(previous):
            previous(signum, frame)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def _worker_count(executor: Executor | None) -> int:
    """Dask workers connected now. SLURM jobs and MPI ranks join while tasks run, so the caller keeps the largest
    count seen: the number of workers the run had at its peak."""
    if executor is None:
        return 1
    client = getattr(executor, "_client", executor)  # Dask's ClientExecutor wraps its Client
    info = getattr(client, "scheduler_info", None)
    return len(info()["workers"]) if info else getattr(executor, "_max_workers", 1)  # else a process/thread pool


def _write_index(features: FeaturePaths, summaries: list[TaskSummary]) -> tuple[PreprocessSummary, list[dict]]:
    """Write the run-wide files from the shards; returns the run summary (without its runs yet) and the index
    rows."""
    index, rejects = [], []
    for s in summaries:
        shard = shards.shard_dir(features.folder, s.task_id)
        for row_number, row in enumerate(shards.read_chunks(shard)):
            index.append({"shard": shard.name, "row": row_number, **row})
        rejects.extend(s.rejects)
    labels = sorted({row["label"] for row in index})
    atomic_write_csv(features.index, index, ["shard", "row", *shards.CHUNK_COLUMNS])
    atomic_write_csv(features.rejects, rejects, ["path", "reason"])
    atomic_write_json(features.labels, labels)
    atomic_write_json(features.stats, _merge_stats([s.train_stats for s in summaries]))
    per_split = {split: sum(r["split"] == split for r in index) for split in ("train", "val", "test")}
    nodes = Counter(s.node for s in summaries)
    summary = PreprocessSummary(tasks=len(summaries), tasks_per_node=dict(sorted(nodes.items())),
                                files=sum(s.files for s in summaries), chunks=len(index), chunks_per_split=per_split,
                                silent_chunks_dropped=sum(s.silent_chunks for s in summaries),
                                rejected_files=len(rejects), labels=labels)
    return summary, index


def _merge_stats(parts: list[dict]) -> dict:
    """Per-bin mean and std of each feature over the training split, for input normalisation."""
    merged = {}
    for name in sorted({n for p in parts for n in p}):
        frames = sum(p[name]["frames"] for p in parts if name in p)
        if frames == 0:
            continue
        total = np.sum([p[name]["sum"] for p in parts if name in p and p[name]["frames"]], axis=0)
        total_sq = np.sum([p[name]["sumsq"] for p in parts if name in p and p[name]["frames"]], axis=0)
        mean = total / frames
        std = np.sqrt(np.maximum(total_sq / frames - mean**2, 1e-12))
        merged[name] = {"frames": int(frames), "mean": mean.tolist(), "std": std.tolist()}
    return merged
