"""One preprocessing task: a batch of source files in, one feature shard (and its images) out.

This is the plain function that Dask runs on a worker, a test runs in-process, and a rerun skips when its shard is
already complete.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from pipeline.audio import AudioError, load_audio
from pipeline.config import PreprocessConfig
from pipeline.data.sources import SourceFile, source_path
from pipeline.layout import RunLayout
from pipeline.preprocess import image_shards, images, shards
from pipeline.preprocess.chunking import split_into_chunks
from pipeline.preprocess.features import FeatureExtractor
from pipeline.preprocess.shards import TaskSummary


@dataclass(frozen=True)
class Task:
    task_id: int
    files: tuple[SourceFile, ...]


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

    Chunks of all the task's files go through the features and images in batches. Image shards (tars) are written
    under a temporary name and renamed into place; image files (`image_layout: files`) and chunk wavs are written in
    place without one. Either way the shard folder, renamed into place last, marks the task complete, and a rerun
    redoes every file of an incomplete task, overwriting whatever a crash left half-written.
    """
    features_dir = RunLayout(Path(run_dir)).features.folder
    if shards.is_complete(features_dir, task.task_id):
        return shards.read_summary(features_dir, task.task_id)
    return finish_task(decode_task(task, config, sample_rate, root), task, config, sample_rate, run_dir)


def decode_task(task: Task, config: PreprocessConfig, sample_rate: int, root: str) -> tuple[list, list[dict], int]:
    """The first half of `run_task`, CPU work only (decode, resample, chunk): what `finish_task` takes. With
    features on GPUs, Dask runs it on the CPU workers and hands its result to a GPU worker (`preprocess.gpus`)."""
    torch.set_num_threads(1)
    return _decode(task, config, sample_rate, root)


def finish_task(decoded_task: tuple[list, list[dict], int], task: Task, config: PreprocessConfig, sample_rate: int,
                run_dir: str) -> TaskSummary:
    """The second half of `run_task`: features, images (and chunk wavs) of the decoded chunks, then the shard."""
    run = Path(run_dir)
    features_dir = RunLayout(run).features.folder
    if shards.is_complete(features_dir, task.task_id):  # a retried or duplicated attempt
        return shards.read_summary(features_dir, task.task_id)
    torch.set_num_threads(1)
    extractor = FeatureExtractor(config, sample_rate, feature_device(config.device))
    decoded, rejects, silent = decoded_task
    rows = [_row(source, k, start, end, sample_rate) for source, chunks, _ in decoded
            for k, (start, end) in zip(chunks.index, chunks.bounds, strict=True)]
    waveforms = np.concatenate([c.samples for _, c, _ in decoded]) if decoded else np.zeros((0, 1), np.float32)
    parts: dict[str, list[np.ndarray]] = {}
    with _image_shards(run, task.task_id, config) as tars:
        for first in range(0, len(rows), BATCH_CHUNKS):
            batch = rows[first:first + BATCH_CHUNKS]
            feats = extractor(torch.from_numpy(waveforms[first:first + BATCH_CHUNKS]))
            for name, value in feats.items():
                parts.setdefault(name, []).append(value.numpy())
            _write_images(run, batch, feats, config, tars)
        if not shards.is_complete(features_dir, task.task_id):  # else another attempt finished first: keep its tars
            _record_member_bytes(rows, tars.commit())  # before the shard folder's rename, the completion marker
    if config.export_chunks:
        _write_chunk_wavs(run, rows, decoded, sample_rate)
    stacked = {name: np.concatenate(arrays) for name, arrays in parts.items()}
    summary = TaskSummary(task_id=task.task_id, node=node_name(), files=len(task.files), chunks=len(rows),
                          silent_chunks=silent, rejects=rejects, train_stats=_train_stats(stacked, rows))
    shards.write_shard(features_dir, task.task_id, stacked, rows, summary)
    return summary


def _decode(task: Task, config: PreprocessConfig, sample_rate: int, root: str) -> tuple[list, list[dict], int]:
    """(source, chunks, samples) of each file of `task` that gives chunks; a {path, reason} reject for each that
    does not; and how many chunks fell below the silence threshold."""
    decoded, rejects, silent = [], [], 0
    for source in task.files:
        path = source_path(root, source.path)
        try:
            samples = load_audio(path, sample_rate)
        except (AudioError, OSError) as err:  # the reason names the file as the manifest does, not this machine's path
            rejects.append({"path": source.path, "reason": str(err).replace(str(path), source.path)})
            continue
        chunks = split_into_chunks(samples, config, sample_rate)
        silent += chunks.total - len(chunks.index)
        if not chunks.index:
            seconds = len(samples) / sample_rate
            reason = f"shorter than one chunk ({seconds:.2f} s)" if not chunks.total else \
                f"all {chunks.total} chunks below the silence threshold ({config.silence_threshold_db} dBFS)"
            rejects.append({"path": source.path, "reason": reason})
            continue
        decoded.append((source, chunks, samples))
    return decoded, rejects, silent


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
    (relative to the run folder: `images/<feature>/shard-NNNNN.tar#<member>`, or the file's path)."""
    suffix = images.SUFFIXES[config.image_format]
    for feature in config.image_features if config.images else []:
        indices = images.colour_indices(feats[feature], config.image_size)
        for row, picture in zip(rows, indices, strict=True):
            data = images.encode(picture, config.colormap, config.image_format)
            if config.image_layout == "shards":
                meta = {"label": row["label"], "split": row["split"], "path": row["path"], "chunk": row["chunk"]}
                member = tars.write(feature, image_shards.sample_key(row["stem"]), suffix, data, meta)
                row[f"image_{feature}"] = f"{IMAGES}/{feature}/{image_shards.shard_file(tars.task_id)}#{member}"
            else:
                row[f"image_{feature}"] = f"{IMAGES}/{feature}/{row['split']}/{row['label']}/{row['stem']}.{suffix}"
                _write_bytes(run / row[f"image_{feature}"], data)


def _record_member_bytes(rows: list[dict], tars: list[Path]) -> None:
    """Set each row's image_<feature>_offset and _size: where its image's bytes lie in the committed tar."""
    for tar in tars:
        feature, table = tar.parent.name, image_shards.member_table(tar)
        for row in rows:
            _, member = image_shards.split_reference(row[f"image_{feature}"])
            row[f"image_{feature}_offset"], row[f"image_{feature}_size"] = table[member]


def _write_chunk_wavs(run: Path, rows: list[dict], decoded: list, sample_rate: int) -> None:
    bounds = [(samples, start, end) for _, chunks, samples in decoded for start, end in chunks.bounds]
    for row, (samples, start, end) in zip(rows, bounds, strict=True):
        row["audio"] = f"{CHUNK_WAVS}/{row['split']}/{row['label']}/{row['stem']}.wav"
        (run / row["audio"]).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(run / row["audio"]), samples[start:end], sample_rate, subtype="PCM_16", format="WAV")


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


def _train_stats(arrays: dict[str, np.ndarray], rows: list[dict]) -> dict:
    """Per-bin frame count, sum and sum of squares over training chunks, to be merged into mean/std."""
    train = np.array([r["split"] == "train" for r in rows], dtype=bool)
    stats = {}
    for name, array in arrays.items():
        x = array[train].astype(np.float64)
        frames = x.shape[0] * x.shape[2] if x.size else 0
        stats[name] = {"frames": frames, "sum": x.sum(axis=(0, 2)).tolist(),
                       "sumsq": (x**2).sum(axis=(0, 2)).tolist()}
    return stats
