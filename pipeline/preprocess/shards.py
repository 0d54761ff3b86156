"""Feature shards: one folder per Dask task, written atomically, plus one index over all of them.

A shard holds one `.npy` array per feature ([chunks, bins, frames], float16) and `chunks.csv` naming each row's
source file, label and split. `.npy` was chosen because the trainer can memory-map it and read any row without
decoding a container, and numpy is all it takes to inspect one. A shard folder is built under a temporary name and
renamed into place, so a folder named `shard-NNNNN` is always complete: that rename is the completion marker.

This module owns the layout inside a shard folder (`<feature>.npy`, `chunks.csv`, `summary.json`); the folders
around it are `pipeline.layout.FeaturePaths`.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.records import Record

CHUNKS = "chunks.csv"
SUMMARY = "summary.json"
"""Written last into a shard: what its task made (`TaskSummary`)."""


@dataclass(kw_only=True)
class TaskSummary(Record):
    """shard-NNNNN/summary.json: what one task made, read back by a rerun (which skips the task) and by the merge
    into the features folder's index and summary."""

    task_id: int
    node: str = "unknown"
    """The SLURM node (or host) the task ran on."""
    files: int
    """Source files of the task, rejected ones included."""
    chunks: int
    """Rows of the shard."""
    silent_chunks: int = 0
    """Chunks dropped below `preprocess.silence_threshold_db`."""
    rejects: list[dict]
    """One {path, reason} per source file that gave no chunk."""
    train_stats: dict
    """Per feature: frames, per-bin sum and sum of squares over the task's training chunks."""


CHUNK_COLUMNS = ["path", "label", "split", "chunk", "start_s", "end_s", "image_logmel", "image_mfcc", "audio",
                 "image_logmel_offset", "image_logmel_size", "image_mfcc_offset", "image_mfcc_size"]
"""Columns of chunks.csv and index.csv; image and audio paths are relative to the run folder, empty when absent. An
image in a tar shard is `images/<feature>/shard-NNNNN.tar#<member>` (see `pipeline.preprocess.image_shards`), and
`image_<feature>_offset` / `_size` say where its bytes lie in the tar, so that a reader fetches it with one read
and keeps two integers per chunk instead of a table of every tar's members."""


def shard_dir(features_dir: Path, task_id: int) -> Path:
    return Path(features_dir) / f"shard-{task_id:05d}"


def is_complete(features_dir: Path, task_id: int) -> bool:
    return (shard_dir(features_dir, task_id) / SUMMARY).is_file()


def remove_partial(features_dir: Path) -> int:
    """Delete the temporary folders of shards whose writer died (a killed worker or job): no rename will ever
    complete them. Call it only while no task of this folder runs. Returns how many there were."""
    partial = sorted(Path(features_dir).glob(".shard-*"))
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return len(partial)


def write_shard(features_dir: Path, task_id: int, arrays: dict[str, np.ndarray], rows: list[dict],
                summary: TaskSummary) -> Path:
    final = shard_dir(features_dir, task_id)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=features_dir))
    try:
        os.chmod(tmp, Path(features_dir).stat().st_mode & 0o7777)  # mkdtemp's 0700 would hide it from the group
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array.astype(np.float16))
        with open(tmp / CHUNKS, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CHUNK_COLUMNS, restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        (tmp / SUMMARY).write_text(json.dumps(summary.to_dict()))
        if final.exists():  # an earlier attempt of the same task (a retried worker) finished first
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def read_summary(features_dir: Path, task_id: int) -> TaskSummary:
    return TaskSummary.read(shard_dir(features_dir, task_id) / SUMMARY)


def read_chunks(shard: Path) -> list[dict]:
    with open(shard / CHUNKS, newline="") as f:
        return list(csv.DictReader(f))
