"""Feature shards: one folder per Dask task, written atomically, plus one index over all of them.

A shard holds one `.npy` array per feature ([chunks, bins, frames], float16) and `chunks.csv` naming each row's
source file, label and split; the arrays are written a batch at a time (`ShardWriter`). `.npy` was chosen because
the trainer reads any row with one read at an offset its header gives, without decoding a container, and numpy is
all it takes to inspect one. A shard folder is built under a temporary name and
renamed into place, so a folder named `shard-NNNNN` is always complete: that rename is the completion marker.

This module owns the layout inside a shard folder (`<feature>.npy`, `chunks.csv`, `summary.json`); the folders
around it are `pipeline.layout.FeaturePaths`.
"""

from __future__ import annotations

import contextlib
import csv
import io
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


class ShardWriter:
    """One task's shard while the task runs: feature rows appended to `.npy` files in a temporary folder as batches
    are made, so that a shard never has to fit in memory, then renamed into place by `finish`.

    `mark` and `rollback` bracket one source file: a file whose decoding fails after some of its batches were
    written is cut back out (the files are truncated to the mark), and its rejection leaves the shard as if the
    file had never been read. Used as a context manager; leaving without `finish` deletes the temporary folder.
    """

    def __init__(self, features_dir: Path, task_id: int) -> None:
        self.final = shard_dir(features_dir, task_id)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.", dir=features_dir))
        os.chmod(self.tmp, Path(features_dir).stat().st_mode & 0o7777)  # mkdtemp's 0700 would hide it from the group
        self._arrays: dict[str, NpyAppender] = {}
        self._marks: dict[str, int] = {}

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        for array in self._arrays.values():
            array.discard()
        if self.tmp.exists():
            shutil.rmtree(self.tmp)

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        """Add one batch of rows ([n, bins, frames] per feature), stored as float16."""
        for name, array in arrays.items():
            if name not in self._arrays:
                self._arrays[name] = NpyAppender(self.tmp / f"{name}.npy", array.shape[1:])
                self._marks.setdefault(name, 0)
            self._arrays[name].append(array.astype(np.float16))

    def mark(self) -> None:
        self._marks = {name: array.rows for name, array in self._arrays.items()}

    def rollback(self) -> None:
        for name, array in self._arrays.items():
            array.truncate(self._marks.get(name, 0))

    def finish(self, rows: list[dict], summary: TaskSummary) -> Path:
        """Write chunks.csv and summary.json and rename the folder into place (unless an earlier attempt of the same
        task, a retried worker, finished first)."""
        for array in self._arrays.values():
            array.close()
            if not rows:  # as before streaming: a shard of rejects only has no arrays
                array.path.unlink()
        with open(self.tmp / CHUNKS, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CHUNK_COLUMNS, restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        (self.tmp / SUMMARY).write_text(json.dumps(summary.to_dict()))
        if not self.final.exists():
            os.rename(self.tmp, self.final)
        return self.final


class NpyAppender:
    """A `.npy` file of float16 rows written a batch at a time: the header, whose shape names the row count, is
    reserved first and rewritten by `close` (same length: numpy pads headers to 64 bytes, and the reserved one
    holds the largest count)."""

    def __init__(self, path: Path, row_shape: tuple[int, ...]) -> None:
        self.path, self.row_shape, self.rows = path, tuple(row_shape), 0
        self._file = open(path, "wb+")  # noqa: SIM115 - open across appends; `close` ends it
        self._header = len(self._header_bytes(10**15))
        self._row_bytes = 2 * int(np.prod(self.row_shape))
        self._file.write(self._header_bytes(10**15))

    def _header_bytes(self, rows: int) -> bytes:
        out = io.BytesIO()
        header = {"descr": np.dtype(np.float16).str, "fortran_order": False, "shape": (rows, *self.row_shape)}
        np.lib.format.write_array_header_1_0(out, header)
        return out.getvalue()

    def append(self, rows: np.ndarray) -> None:
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path}: rows of shape {rows.shape[1:]}, the shard's are {self.row_shape}")
        self._file.write(np.ascontiguousarray(rows).tobytes())
        self.rows += len(rows)

    def truncate(self, rows: int) -> None:
        self._file.truncate(self._header + rows * self._row_bytes)
        self._file.seek(0, os.SEEK_END)
        self.rows = rows

    def discard(self) -> None:
        """Close without finishing (the file is deleted with its folder); buffered rows that no longer fit on a
        full disk are dropped instead of raising again."""
        with contextlib.suppress(OSError):
            self._file.close()

    def close(self) -> None:
        if self._file.closed:
            return
        header = self._header_bytes(self.rows)
        if len(header) != self._header:
            raise AssertionError(f"{self.path}: npy header changed length ({len(header)} != {self._header})")
        self._file.seek(0)
        self._file.write(header)
        self._file.close()


def write_shard(features_dir: Path, task_id: int, arrays: dict[str, np.ndarray], rows: list[dict],
                summary: TaskSummary) -> Path:
    """A whole shard at once (arrays already in memory)."""
    with ShardWriter(features_dir, task_id) as writer:
        writer.append(arrays)
        return writer.finish(rows, summary)


def read_summary(features_dir: Path, task_id: int) -> TaskSummary:
    return TaskSummary.read(shard_dir(features_dir, task_id) / SUMMARY)


def read_chunks(shard: Path) -> list[dict]:
    with open(shard / CHUNKS, newline="") as f:
        return list(csv.DictReader(f))
