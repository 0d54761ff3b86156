"""What decoding one file costs in memory, and whether the Dask worker running it has that much left.

A worker past its memory limit is killed by its nanny, Dask reruns the task on the next worker, which dies the
same way, and the run ends in KilledWorker. Decoding in blocks makes the cost of a file independent of its length,
but not of its channel count and rate (a block is `channels x rate x seconds` samples), and the feature batch is a
fixed cost on top. So before a file is decoded its block is sized to what the worker has left, and a file that does
not fit even with a short block is one reject with the figures, never a dead worker.
"""

from __future__ import annotations

import dask
import psutil

from pipeline.audio import BLOCK_SECONDS, AudioError, AudioInfo
from pipeline.config import PreprocessConfig

MIN_BLOCK_SECONDS = 1.0
"""Shortest block worth decoding: shorter, per-call overheads dominate (and such a file is pathological)."""
MB = 1e6


ALLOCATOR_MARGIN = 1.25
"""What a batch really takes over the sizes of its arrays (allocator slack, torch's workspaces, the images):
benchmarks/long_recordings.py measured 416-430 MiB above a worker's resident memory at the demo's settings, where
the array sizes add up to 369 MiB (x1.15); the margin covers that."""


def batch_bytes(config: PreprocessConfig, sample_rate: int, batch: int) -> int:
    """Peak bytes of one feature batch: the waveforms (and a copy), the complex STFT and its power, and the mel and
    dB arrays, times ALLOCATOR_MARGIN."""
    samples = round(config.chunk_seconds * sample_rate)
    frames = samples // config.hop_length + 1
    waveforms = 2 * batch * samples * 4
    stft = batch * (config.n_fft // 2 + 1) * frames * (8 + 4)
    mels = 4 * batch * config.n_mels * frames * 4
    return round(ALLOCATOR_MARGIN * (waveforms + stft + mels))


def block_bytes_per_second(info: AudioInfo, sample_rate: int) -> float:
    """Bytes per second of a block in flight: the decoded [frames, channels] float32 block twice (libsndfile's or
    ffmpeg's buffer and numpy's), its mono mix, and the resampler's and chunker's copies at the target rate."""
    return 2 * info.rate * info.channels * 4 + info.rate * 4 + 4 * sample_rate * 4


def worker_limit(config: PreprocessConfig) -> float | None:
    """Bytes this process may use: `preprocess.worker_memory_mb`, else the Dask worker's `memory_limit`, else
    none (not in a worker, or a worker without a limit)."""
    if config.worker_memory_mb is not None:
        return config.worker_memory_mb * MB
    try:
        from distributed import get_worker

        return get_worker().memory_manager.memory_limit or None
    except (ImportError, ValueError, AttributeError):
        return None


def block_planner(config: PreprocessConfig, sample_rate: int, batch: int, path: str):
    """A function of a file's AudioInfo giving its block length in seconds (for `stream_audio`): BLOCK_SECONDS if
    the worker has the memory, shorter if it has less, and an AudioError naming the figures if even
    MIN_BLOCK_SECONDS would not fit under Dask's pause threshold of the limit."""
    def plan(info: AudioInfo) -> float:
        limit = worker_limit(config)
        if limit is None:
            return BLOCK_SECONDS
        pause = dask.config.get("distributed.worker.memory.pause", 0.8) or 0.8
        resident = psutil.Process().memory_info().rss
        left = pause * limit - resident - batch_bytes(config, sample_rate, batch)
        per_second = block_bytes_per_second(info, sample_rate)
        seconds = min(BLOCK_SECONDS, left / per_second)
        if seconds < MIN_BLOCK_SECONDS:
            need = batch_bytes(config, sample_rate, batch) + MIN_BLOCK_SECONDS * per_second
            raise AudioError(
                f"{path}: too big for this worker's memory: decoding its {info.channels} channels at {info.rate} Hz "
                f"takes about {need / MB:.0f} MB (a {MIN_BLOCK_SECONDS:.0f} s block and a batch of {batch} "
                f"chunks), and the worker has {max(0.0, pause * limit - resident) / MB:.0f} MB left of its "
                f"{limit / MB:.0f} MB limit ({resident / MB:.0f} MB in use, Dask pauses at {pause:.0%}); "
                "give the workers more memory (preprocess.worker_memory_mb, the jobs' memory)")
        return seconds

    return plan
