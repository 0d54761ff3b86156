"""Cutting a recording into fixed-length chunks, possibly overlapping, without the silent ones, as its samples
arrive: a long recording is chunked block by block and never held whole."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.config import PreprocessConfig


@dataclass(frozen=True)
class Chunks:
    """Kept chunks of one recording, or of one batch of it."""

    index: list[int]
    """Position of each kept chunk in the recording's sequence of chunks (stable when silent ones are dropped)."""
    bounds: list[tuple[int, int]]
    """(start, end) samples of each kept chunk in the source; `end - start` is short only for a padded last one."""
    samples: np.ndarray
    """[kept, chunk samples] float32, a short last chunk zero-padded."""
    total: int
    """Chunks before the silence filter (in a batch: so far); 0 means the recording is shorter than one chunk."""


def level_db(samples: np.ndarray, bounds: list[tuple[int, int]]) -> np.ndarray:
    """RMS level of each chunk's real samples (padding excluded) in dB relative to full scale."""
    rms = np.array([np.sqrt(np.mean(np.square(samples[start:end], dtype=np.float64))) for start, end in bounds])
    return 20 * np.log10(np.maximum(rms, 1e-10))


class ChunkStream:
    """Chunks as the config says (length, hop, last-chunk policy, silence threshold), from samples pushed in
    blocks: `push` returns the chunks the block completes, `finish` the padded last one, if the policy keeps it.

    Only the samples from the next chunk's start on are kept between blocks, so memory is one chunk plus one
    block. Chunks start every `hop` samples; with `last_chunk: pad`, samples no full chunk covers get one more,
    zero-padded chunk if they make at least `min_last_chunk` of a chunk.
    """

    def __init__(self, config: PreprocessConfig, sample_rate: int) -> None:
        self.chunk = round(config.chunk_seconds * sample_rate)
        self.hop = round((config.hop_seconds or config.chunk_seconds) * sample_rate)
        self._config = config
        self._buffer = np.zeros(0, np.float32)
        self._buffer_start = 0  # source position of _buffer[0]
        self._next = 0  # source position where the next chunk starts
        self.total = 0  # chunks so far, silent ones included
        self.samples_seen = 0

    def push(self, block: np.ndarray) -> Chunks:
        self.samples_seen += len(block)
        self._buffer = np.concatenate([self._buffer, block.astype(np.float32, copy=False)])
        bounds = []
        while self._next + self.chunk <= self.samples_seen:
            bounds.append((self._next, self._next + self.chunk))
            self._next += self.hop
        return self._keep(bounds)

    def finish(self) -> Chunks:
        covered = self._next - self.hop + self.chunk if self.total else 0
        rest = self.samples_seen - covered
        pad = self._config.last_chunk == "pad" and rest > 0 and rest >= self._config.min_last_chunk * self.chunk
        return self._keep([(self._next, self.samples_seen)] if pad else [])

    def _keep(self, bounds: list[tuple[int, int]]) -> Chunks:
        """The chunks of `bounds` above the silence threshold, then the buffer cut to the next chunk's start."""
        first = self.total
        self.total += len(bounds)
        local = [(start - self._buffer_start, end - self._buffer_start) for start, end in bounds]
        kept = list(range(len(bounds)))
        if self._config.silence_threshold_db is not None and bounds:
            loud = level_db(self._buffer, local) >= self._config.silence_threshold_db
            kept = [i for i in kept if loud[i]]
        out = np.zeros((len(kept), self.chunk), dtype=np.float32)
        for row, i in enumerate(kept):
            start, end = local[i]
            out[row, : end - start] = self._buffer[start:end]
        drop = min(self._next, self.samples_seen) - self._buffer_start
        if drop > 0:
            self._buffer = self._buffer[drop:].copy()
            self._buffer_start += drop
        return Chunks([first + i for i in kept], [bounds[i] for i in kept], out, self.total)


class ChunkedRecording:
    """One recording chunked in batches of at most `batch` kept chunks, and what the whole recording gave (`total`
    chunks, `samples`) once `batches` is consumed."""

    def __init__(self, config: PreprocessConfig, sample_rate: int) -> None:
        self.stream = ChunkStream(config, sample_rate)

    def batches(self, blocks: Iterable[np.ndarray], batch: int) -> Iterator[Chunks]:
        waiting: list[Chunks] = []
        for block in blocks:
            waiting.append(self.stream.push(block))
            while sum(len(c.index) for c in waiting) >= batch:
                ready, waiting = _take(waiting, batch)
                yield ready
        waiting.append(self.stream.finish())
        while waiting and (ready_count := sum(len(c.index) for c in waiting)):
            ready, waiting = _take(waiting, min(batch, ready_count))
            yield ready

    @property
    def total(self) -> int:
        return self.stream.total

    @property
    def samples(self) -> int:
        return self.stream.samples_seen


def _take(parts: list[Chunks], count: int) -> tuple[Chunks, list[Chunks]]:
    """The first `count` kept chunks of `parts` as one Chunks, and the rest."""
    index = [i for c in parts for i in c.index]
    bounds = [b for c in parts for b in c.bounds]
    samples = np.concatenate([c.samples for c in parts])
    total = parts[-1].total
    rest = Chunks(index[count:], bounds[count:], samples[count:], total)
    return Chunks(index[:count], bounds[:count], samples[:count], total), ([rest] if rest.index else [])


def split_into_chunks(samples: np.ndarray, config: PreprocessConfig, sample_rate: int) -> Chunks:
    """Chunk a whole recording already in memory (a prediction's file): the streaming chunker, in one block."""
    stream = ChunkStream(config, sample_rate)
    parts = [stream.push(samples), stream.finish()]
    return Chunks([i for c in parts for i in c.index], [b for c in parts for b in c.bounds],
                  np.concatenate([c.samples for c in parts]), stream.total)
