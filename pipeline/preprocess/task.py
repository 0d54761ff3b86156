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
import torch

from pipeline.audio import AudioError, load_audio, save_wav
from pipeline.config import PreprocessConfig
from pipeline.data.manifest import SourceFile
from pipeline.preprocess import images, shards
from pipeline.preprocess.chunking import Chunks, split_into_chunks
from pipeline.preprocess.features import FeatureExtractor


@dataclass(frozen=True)
class Task:
    task_id: int
    files: tuple[SourceFile, ...]


def chunk_name(source: SourceFile, chunk: int) -> str:
    """File stem of a chunk's image or wav: the source's stem, a digest of its path (two sources may share a stem),
    and the chunk's position."""
    digest = hashlib.sha1(source.path.encode()).hexdigest()[:8]
    return f"{Path(source.path).stem}-{digest}-c{chunk:04d}"


def run_task(task: Task, config: PreprocessConfig, sample_rate: int, run_dir: str) -> dict:
    """Process every file of `task`; returns the shard summary (chunks written, rejects, train statistics)."""
    run = Path(run_dir)
    features_dir = run / "features"
    if shards.is_complete(features_dir, task.task_id):
        return shards.read_summary(features_dir, task.task_id)
    torch.set_num_threads(1)
    extractor = FeatureExtractor(config, sample_rate, feature_device(config.device))
    arrays: dict[str, list[np.ndarray]] = {}
    rows, rejects, silent = [], [], 0
    for source in task.files:
        try:
            samples = load_audio(source.path, sample_rate)
        except (AudioError, OSError) as err:
            rejects.append({"path": source.path, "reason": str(err)})
            continue
        chunks = split_into_chunks(samples, config, sample_rate)
        silent += chunks.total - len(chunks.index)
        if not chunks.index:
            seconds = len(samples) / sample_rate
            reason = f"shorter than one chunk ({seconds:.2f} s)" if not chunks.total else \
                f"all {chunks.total} chunks below the silence threshold ({config.silence_threshold_db} dBFS)"
            rejects.append({"path": source.path, "reason": reason})
            continue
        feats = extractor(torch.from_numpy(chunks.samples))
        for name, value in feats.items():
            arrays.setdefault(name, []).append(value.numpy())
        rows += _write_chunk_files(run, source, chunks, feats, samples, config, sample_rate)
    stacked = {name: np.concatenate(parts) for name, parts in arrays.items()}
    summary = {"task_id": task.task_id, "node": node_name(), "files": len(task.files), "chunks": len(rows),
               "silent_chunks": silent, "rejects": rejects,
               "train_stats": _train_stats(stacked, rows)}
    shards.write_shard(features_dir, task.task_id, stacked, rows, summary)
    return summary


def _write_chunk_files(run: Path, source: SourceFile, chunks: Chunks, feats: dict[str, torch.Tensor],
                       samples: np.ndarray, config: PreprocessConfig, sample_rate: int) -> list[dict]:
    """Images (and chunk wavs, if asked) of one file's chunks; returns their rows for chunks.csv."""
    rows = [{"path": source.path, "label": source.label, "split": source.split, "chunk": k,
             "start_s": round(start / sample_rate, 4), "end_s": round(end / sample_rate, 4)}
            for k, (start, end) in zip(chunks.index, chunks.bounds, strict=True)]
    for feature in config.image_features if config.images else []:
        pictures = images.render(feats[feature], config.image_size, config.colormap)
        for row, picture in zip(rows, pictures, strict=True):
            row[f"image_{feature}"] = relative = \
                f"images/{feature}/{source.split}/{source.label}/{chunk_name(source, row['chunk'])}." \
                + images.SUFFIXES[config.image_format]
            images.save(run / relative, picture, config.image_format)
    if config.export_chunks:
        for row, (start, end) in zip(rows, chunks.bounds, strict=True):
            row["audio"] = f"chunks/{source.split}/{source.label}/{chunk_name(source, row['chunk'])}.wav"
            save_wav(run / row["audio"], samples[start:end], sample_rate)
    return rows


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
