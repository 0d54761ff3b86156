"""One preprocessing task: a batch of source files in, one feature shard (and its images) out.

This is the plain function that Dask runs on a worker, a test runs in-process, and a rerun skips when its shard is
already complete.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from pipeline.audio import AudioError, stream_audio
from pipeline.config import PreprocessConfig
from pipeline.data.sources import SourceFile, source_path
from pipeline.io import disk_full
from pipeline.layout import RunLayout
from pipeline.preprocess import image_shards, images, memory, shards
from pipeline.preprocess.chunking import ChunkedRecording, Chunks
from pipeline.preprocess.features import FeatureExtractor
from pipeline.preprocess.shards import TaskSummary


@dataclass(frozen=True)
class Task:
    task_id: int
    files: tuple[SourceFile, ...]
    input_bytes: int = 0
    """Size of its files on disk when the tasks were cut (`run.make_tasks`); what sizes a task."""


def chunk_name(source: SourceFile, chunk: int) -> str:
    """File stem of a chunk's image or wav (dots made "_": its key in an image shard): the source's stem, a digest of
    its path (two sources may share a stem; the path is relative to the data root, so names do not depend on where
    the data lies), and the chunk's position. The stem is cut to STEM_BYTES (at a character boundary), so that a
    source name near the 255-byte limit of file names still gives images; the digest keeps cut names apart."""
    digest = hashlib.sha1(source.path.encode()).hexdigest()[:8]
    stem = Path(source.path).stem.encode()[:STEM_BYTES].decode(errors="ignore")
    return f"{stem}-{digest}-c{chunk:04d}"


STEM_BYTES = 120
"""Longest source stem (UTF-8 bytes) in a chunk file name; with digest, position and suffix it stays under 255."""


BATCH_CHUNKS = 256
"""Chunks per feature/image batch: large enough to amortise per-call overheads, small enough for any worker."""

IMAGES = RunLayout(Path()).images.as_posix()
"""The images folder relative to the run folder, as the index names each image (`images/<feature>/...`)."""
CHUNK_WAVS = "chunks"
"""Where `preprocess.export_chunks` writes its wavs, relative to the run folder (`chunks/<split>/<label>/`)."""


def run_task(task: Task, config: PreprocessConfig, sample_rate: int, run_dir: str, root: str) -> TaskSummary:
    """Process every file of `task`, read from under the data `root`; returns the shard summary (chunks written,
    rejects, train statistics).

    Each file is decoded a block at a time and cut into chunks as the blocks arrive; the chunks go through the
    features and images in batches, whose rows are appended to the shard's files on disk. So a worker's memory is
    a block plus a batch, whatever the length of the recordings. Image shards (tars) and the feature shard are
    written under temporary names and renamed into place, the shard folder last: its rename marks the task
    complete, and a rerun redoes every file of an incomplete task. Image files (`image_layout: files`) and chunk
    wavs are written in place; a rerun overwrites what a crash left half-written.
    """
    features_dir = RunLayout(Path(run_dir)).features.folder
    if shards.is_complete(features_dir, task.task_id):
        return shards.read_summary(features_dir, task.task_id)
    torch.set_num_threads(1)
    files = (FileChunks(source, config, sample_rate, root) for source in task.files)
    return _write_task(files, task, config, sample_rate, Path(run_dir))


def decode_task(task: Task, config: PreprocessConfig, sample_rate: int, root: str) -> list[FileChunks]:
    """The first half of `run_task`, CPU work only (decode, resample, chunk), every file's chunks held in memory:
    what `finish_task` takes. With features on GPUs, Dask runs it on the CPU workers and hands its result to a GPU
    worker (`preprocess.gpus`); `preprocess.task_megabytes` bounds what a task holds, and a task of one file over
    it runs whole on the GPU worker, streaming, instead (`gpus.SplitExecutor`)."""
    torch.set_num_threads(1)
    return [FileChunks(source, config, sample_rate, root).hold() for source in task.files]


def finish_task(decoded: list[FileChunks], task: Task, config: PreprocessConfig, sample_rate: int,
                run_dir: str) -> TaskSummary:
    """The second half of `run_task`: features, images (and chunk wavs) of the decoded chunks, then the shard."""
    features_dir = RunLayout(Path(run_dir)).features.folder
    if shards.is_complete(features_dir, task.task_id):  # a retried or duplicated attempt
        return shards.read_summary(features_dir, task.task_id)
    torch.set_num_threads(1)
    return _write_task(decoded, task, config, sample_rate, Path(run_dir))


class FileChunks:
    """One source file's kept chunks in batches of BATCH_CHUNKS: decoded lazily from its audio as `batches` is
    iterated, or held in memory after `hold` (to be sent to another worker). Iterating raises AudioError when the
    file turns out to be bad, possibly after some batches; `total` and `samples` describe the whole recording once
    the iteration is done."""

    def __init__(self, source: SourceFile, config: PreprocessConfig, sample_rate: int, root: str) -> None:
        self.source = source
        self._path = source_path(root, source.path)
        self._config, self._rate = config, sample_rate
        self._recording = ChunkedRecording(config, sample_rate)
        self._held: list[Chunks] | None = None
        self._error: str | None = None

    def batches(self) -> Iterator[Chunks]:
        if self._error is not None:
            raise AudioError(self._error)
        if self._held is not None:
            yield from self._held
            return
        plan = memory.block_planner(self._config, self._rate, BATCH_CHUNKS, str(self._path))
        try:
            yield from self._recording.batches(stream_audio(self._path, self._rate, plan), BATCH_CHUNKS)
        except OSError as err:  # a read error of the source; errors of our own writes never pass through here
            raise AudioError(f"{self._path}: cannot be read ({err})") from err

    def hold(self) -> FileChunks:
        try:
            self._held = list(self.batches())
        except AudioError as err:
            self._held, self._error = None, str(err)
        return self

    @property
    def total(self) -> int:
        return self._recording.total

    @property
    def seconds(self) -> float:
        return self._recording.samples / self._rate

    def reason(self, err: AudioError) -> str:
        """The error as rejects.csv says it: naming the file as the manifest does, not by this machine's path."""
        return str(err).replace(str(self._path), self.source.path)


def _write_task(files: Iterable[FileChunks], task: Task, config: PreprocessConfig, sample_rate: int,
                run: Path) -> TaskSummary:
    """Features and images of every file's chunks into the task's shard, file by file: a file that fails part-way
    is cut back out of the shard and becomes a reject. A full file system or quota is a DiskFullError naming the
    shard, its temporary files gone, so that the rerun once space is freed redoes the task."""
    try:
        return _write_shard(files, task, config, sample_rate, run)
    except (OSError, RuntimeError) as err:  # soundfile's write errors are RuntimeErrors
        full = disk_full(shards.shard_dir(RunLayout(run).features.folder, task.task_id), err)
        if full is None:
            raise
        raise full from err


def _write_shard(files: Iterable[FileChunks], task: Task, config: PreprocessConfig, sample_rate: int,
                 run: Path) -> TaskSummary:
    features_dir = RunLayout(run).features.folder
    output = _TaskOutput(FeatureExtractor(config, sample_rate, feature_device(config.device)), config, sample_rate, run)
    with shards.ShardWriter(features_dir, task.task_id) as shard, _image_shards(run, task.task_id, config) as tars:
        for file in files:
            output.add_file(file, shard, tars)
        if not shards.is_complete(features_dir, task.task_id):  # else another attempt finished first: keep its tars
            tars.commit()  # before the shard folder's rename, the completion marker
        summary = TaskSummary(task_id=task.task_id, node=node_name(), files=len(task.files), chunks=len(output.rows),
                              silent_chunks=output.silent, rejects=output.rejects, train_stats=output.stats.to_dict())
        shard.finish(output.rows, summary)
    return summary


class _TaskOutput:
    """What a task has written so far: the rows of the files that made it, the rejects, the silent count and the
    training statistics (added per file, only once the file has been read to its end)."""

    def __init__(self, extractor: FeatureExtractor, config: PreprocessConfig, sample_rate: int, run: Path) -> None:
        self.extractor, self.config, self.rate, self.run = extractor, config, sample_rate, run
        self.rows: list[dict] = []
        self.rejects: list[dict] = []
        self.silent = 0
        self.stats = TrainStats()

    def add_file(self, file: FileChunks, shard: shards.ShardWriter, tars: image_shards.ImageShards) -> None:
        shard.mark()
        tars.mark()
        rows: list[dict] = []
        stats = TrainStats()
        try:
            for batch in file.batches():
                first = len(rows)
                rows += [_row(file.source, k, start, end, self.rate)
                         for k, (start, end) in zip(batch.index, batch.bounds, strict=True)]
                on_device = self.extractor.on_device(torch.from_numpy(batch.samples))
                feats = {name: value.cpu() for name, value in on_device.items()}
                arrays = {name: value.numpy() for name, value in feats.items()}
                shard.append(arrays)
                stats.add(arrays, rows[first:])
                _write_images(self.run, rows[first:], on_device, self.config, tars)
                if self.config.export_chunks:
                    _write_chunk_wavs(self.run, rows[first:], batch, self.rate)
        except AudioError as err:
            self._undo(rows, shard, tars)
            self.rejects.append({"path": file.source.path, "reason": file.reason(err)})
            return
        self.silent += file.total - len(rows)
        if not rows:
            reason = f"shorter than one chunk ({file.seconds:.2f} s)" if not file.total else \
                f"all {file.total} chunks below the silence threshold ({self.config.silence_threshold_db} dBFS)"
            self.rejects.append({"path": file.source.path, "reason": reason})
            return
        self.rows += rows
        self.stats.merge(stats)

    def _undo(self, rows: list[dict], shard: shards.ShardWriter, tars: image_shards.ImageShards) -> None:
        """Cut a failed file's batches back out: its rows of the arrays and tars, and any files written in place."""
        shard.rollback()
        tars.rollback()
        for row in rows:
            for key in (f"image_{f}" for f in self.config.image_features):
                if row.get(key) and image_shards.split_reference(row[key]) is None:
                    (self.run / row[key]).unlink(missing_ok=True)
            if row.get("audio"):
                (self.run / row["audio"]).unlink(missing_ok=True)


def _row(source: SourceFile, k: int, start: int, end: int, sample_rate: int) -> dict:
    return {"path": source.path, "label": source.label, "split": source.split, "chunk": k,
            "start_s": round(start / sample_rate, 4), "end_s": round(end / sample_rate, 4),
            "stem": chunk_name(source, k)}


def _image_shards(run: Path, task_id: int, config: PreprocessConfig) -> image_shards.ImageShards:
    """The task's tars, one per image feature with `image_layout: shards`; none otherwise."""
    sharded = config.images and config.image_layout == "shards"
    return image_shards.ImageShards(run / IMAGES, task_id, list(config.image_features) if sharded else [])


def _write_images(run: Path, rows: list[dict], feats: dict[str, torch.Tensor], config: PreprocessConfig,
                  tars: image_shards.ImageShards) -> None:
    """One image per chunk and feature, into the task's tar or a file of its own; sets each row's image_<feature>
    (relative to the run folder: `images/<feature>/shard-NNNNN.tar#<member>`, or the file's path). `feats` may be
    on a GPU: the images are then made there (`images`' docstring says what reaches the host)."""
    suffix = images.SUFFIXES[config.image_format]
    for feature in config.image_features if config.images else []:
        for row, data in zip(rows, _encoded(feats[feature], config), strict=True):
            if config.image_layout == "shards":
                meta = {"label": row["label"], "split": row["split"], "path": row["path"], "chunk": row["chunk"]}
                member, offset, size = tars.write(feature, image_shards.sample_key(row["stem"]), suffix, data, meta)
                row[f"image_{feature}"] = f"{IMAGES}/{feature}/{image_shards.shard_file(tars.task_id)}#{member}"
                row[f"image_{feature}_offset"], row[f"image_{feature}_size"] = offset, size
            else:
                row[f"image_{feature}"] = f"{IMAGES}/{feature}/{row['split']}/{row['label']}/{row['stem']}.{suffix}"
                _write_bytes(run / row[f"image_{feature}"], data)


def _encoded(features: torch.Tensor, config: PreprocessConfig) -> list[bytes]:
    """The image files of a batch of one feature: JPEG on the features' GPU, else Pillow from host indices."""
    indices = images.colour_indices(features, config.image_size)
    if indices.is_cuda and config.image_format == "jpeg":
        return images.encode_jpeg_batch(indices, config.colormap)
    return [images.encode(picture, config.colormap, config.image_format) for picture in indices.cpu().numpy()]


def _write_chunk_wavs(run: Path, rows: list[dict], batch: Chunks, sample_rate: int) -> None:
    """Each chunk of the batch as a wav (its real samples, not the padding of a short last one)."""
    for row, samples, (start, end) in zip(rows, batch.samples, batch.bounds, strict=True):
        row["audio"] = f"{CHUNK_WAVS}/{row['split']}/{row['label']}/{row['stem']}.wav"
        (run / row["audio"]).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(run / row["audio"]), samples[: end - start], sample_rate, subtype="PCM_16", format="WAV")


def _write_bytes(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def feature_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("preprocess.device: cuda, but this Dask worker sees no GPU")
    return requested


def node_name() -> str:
    """The SLURM node this task ran on (several virtual nodes can share one host name), else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


class TrainStats:
    """Per feature and bin: frame count, sum and sum of squares over training chunks, merged into mean/std later."""

    def __init__(self) -> None:
        self._stats: dict[str, dict] = {}

    def add(self, arrays: dict[str, np.ndarray], rows: list[dict]) -> None:
        train = np.array([r["split"] == "train" for r in rows], dtype=bool)
        for name, array in arrays.items():
            x = array[train].astype(np.float64)
            self._add(name, x.shape[0] * x.shape[2] if x.size else 0, x.sum(axis=(0, 2)), (x**2).sum(axis=(0, 2)))

    def merge(self, other: TrainStats) -> None:
        for name, s in other._stats.items():
            self._add(name, s["frames"], s["sum"], s["sumsq"])

    def _add(self, name: str, frames: int, total: np.ndarray, squares: np.ndarray) -> None:
        if name not in self._stats:
            self._stats[name] = {"frames": 0, "sum": np.zeros_like(total), "sumsq": np.zeros_like(squares)}
        entry = self._stats[name]
        entry["frames"] += frames
        entry["sum"] = entry["sum"] + total
        entry["sumsq"] = entry["sumsq"] + squares

    def to_dict(self) -> dict:
        return {name: {"frames": s["frames"], "sum": s["sum"].tolist(), "sumsq": s["sumsq"].tolist()}
                for name, s in self._stats.items()}
