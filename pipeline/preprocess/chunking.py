"""Cutting a recording into fixed-length chunks."""

from __future__ import annotations

import numpy as np


def chunk_bounds(n_samples: int, chunk: int, last_chunk: str, min_last: float) -> list[tuple[int, int]]:
    """(start, end) sample indices of each chunk; `end - start < chunk` only for a padded last chunk."""
    bounds = [(start, start + chunk) for start in range(0, n_samples - chunk + 1, chunk)]
    rest_start = len(bounds) * chunk
    rest = n_samples - rest_start
    if last_chunk == "pad" and rest > 0 and rest >= min_last * chunk:
        bounds.append((rest_start, n_samples))
    return bounds


def cut_chunks(samples: np.ndarray, bounds: list[tuple[int, int]], chunk: int) -> np.ndarray:
    """Stack the chunks into a [n_chunks, chunk] array, zero-padding a short last one."""
    out = np.zeros((len(bounds), chunk), dtype=np.float32)
    for i, (start, end) in enumerate(bounds):
        out[i, : end - start] = samples[start:end]
    return out
