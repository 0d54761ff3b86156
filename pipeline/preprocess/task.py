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

from pipeline.audio import AudioError, load_audio
from pipeline.config import PreprocessConfig
from pipeline.data.manifest import SourceFile
from pipeline.preprocess import images, shards
from pipeline.preprocess.chunking import chunk_bounds, cut_chunks
from pipeline.preprocess.features import FeatureExtractor


@dataclass(frozen=True)
class Task:
    task_id: int
    files: tuple[SourceFile, ...]


def image_name(source: SourceFile, chunk: int) -> str:
    digest = hashlib.sha1(source.path.encode()).hexdigest()[:8]
    return f"{Path(source.path).stem}-{digest}-c{chunk:04d}.png"


def run_task(task: Task, config: PreprocessConfig, sample_rate: int, run_dir: str) -> dict:
    """Process every file of `task`; returns the shard summary (chunks written, rejects, train statistics)."""
    run = Path(run_dir)
    features_dir = run / "features"
    if shards.is_complete(features_dir, task.task_id):
        return shards.read_summary(features_dir, task.task_id)
    torch.set_num_threads(1)
    extractor = FeatureExtractor(config, sample_rate)
    chunk_len = round(config.chunk_seconds * sample_rate)
    arrays: dict[str, list[np.ndarray]] = {}
    rows, rejects = [], []
    for source in task.files:
        try:
            samples = load_audio(source.path, sample_rate)
        except (AudioError, OSError) as err:
            rejects.append({"path": source.path, "reason": str(err)})
            continue
        bounds = chunk_bounds(len(samples), chunk_len, config.last_chunk, config.min_last_chunk)
        if not bounds:
            seconds = len(samples) / sample_rate
            rejects.append({"path": source.path, "reason": f"shorter than one chunk ({seconds:.2f} s)"})
            continue
        feats = extractor(torch.from_numpy(cut_chunks(samples, bounds, chunk_len)))
        for name, value in feats.items():
            arrays.setdefault(name, []).append(value.numpy())
        pictures = images.render(feats[config.image_feature], config.image_size, config.colormap) \
            if config.images else [None] * len(bounds)
        for k, ((start, end), picture) in enumerate(zip(bounds, pictures, strict=True)):
            image = ""
            if picture is not None:
                image = f"images/{source.split}/{source.label}/{image_name(source, k)}"
                images.save_png(run / image, picture)
            rows.append({"path": source.path, "label": source.label, "split": source.split, "chunk": k,
                         "start_s": round(start / sample_rate, 4), "end_s": round(end / sample_rate, 4),
                         "image": image})
    stacked = {name: np.concatenate(parts) for name, parts in arrays.items()}
    summary = {"task_id": task.task_id, "node": node_name(), "files": len(task.files), "chunks": len(rows),
               "rejects": rejects,
               "train_stats": _train_stats(stacked, rows)}
    shards.write_shard(features_dir, task.task_id, stacked, rows, summary)
    return summary


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
