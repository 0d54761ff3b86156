"""Cutting a recording into fixed-length chunks, possibly overlapping, without the silent ones."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.config import PreprocessConfig


@dataclass(frozen=True)
class Chunks:
    """The chunks of one recording that are kept."""

    index: list[int]
    """Position of each kept chunk in the recording's sequence of chunks (stable when silent ones are dropped)."""
    bounds: list[tuple[int, int]]
    """(start, end) samples of each kept chunk in the source; `end - start` is short only for a padded last one."""
    samples: np.ndarray
    """[kept, chunk samples] float32, a short last chunk zero-padded."""
    total: int
    """Chunks before the silence filter; 0 means the recording is shorter than one chunk."""


def chunk_bounds(n_samples: int, chunk: int, hop: int, last_chunk: str, min_last: float) -> list[tuple[int, int]]:
    """(start, end) of each chunk, starting every `hop` samples. With `pad`, samples no full chunk covers get one
    more, zero-padded chunk if they make at least `min_last` of a chunk."""
    bounds = [(start, start + chunk) for start in range(0, n_samples - chunk + 1, hop)]
    covered = bounds[-1][1] if bounds else 0
    rest = n_samples - covered
    if last_chunk == "pad" and rest > 0 and rest >= min_last * chunk:
        start = bounds[-1][0] + hop if bounds else 0
        bounds.append((start, n_samples))
    return bounds


def cut_chunks(samples: np.ndarray, bounds: list[tuple[int, int]], chunk: int) -> np.ndarray:
    """Stack the chunks into a [n_chunks, chunk] array, zero-padding a short last one."""
    out = np.zeros((len(bounds), chunk), dtype=np.float32)
    for i, (start, end) in enumerate(bounds):
        out[i, : end - start] = samples[start:end]
    return out


def level_db(samples: np.ndarray, bounds: list[tuple[int, int]]) -> np.ndarray:
    """RMS level of each chunk's real samples (padding excluded) in dB relative to full scale."""
    rms = np.array([np.sqrt(np.mean(np.square(samples[start:end], dtype=np.float64))) for start, end in bounds])
    return 20 * np.log10(np.maximum(rms, 1e-10))


def split_into_chunks(samples: np.ndarray, config: PreprocessConfig, sample_rate: int) -> Chunks:
    """Chunk a recording as the config says: length, hop, last-chunk policy and silence threshold."""
    chunk = round(config.chunk_seconds * sample_rate)
    hop = round((config.hop_seconds or config.chunk_seconds) * sample_rate)
    bounds = chunk_bounds(len(samples), chunk, hop, config.last_chunk, config.min_last_chunk)
    index = list(range(len(bounds)))
    if config.silence_threshold_db is not None and bounds:
        loud = level_db(samples, bounds) >= config.silence_threshold_db
        index = [i for i in index if loud[i]]
    kept = [bounds[i] for i in index]
    return Chunks(index, kept, cut_chunks(samples, kept, chunk), len(bounds))
