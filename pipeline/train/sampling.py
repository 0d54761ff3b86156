"""The training order: shards shuffled per epoch, read a few at a time, the same number of samples on every rank.

`DistributedSampler` draws a global permutation, so at scale every batch touches chunks spread over every shard:
random reads all over a cluster file system. `ShardSampler` keeps the reads local instead. Each epoch it shuffles
the shard order with (seed, epoch), cuts that order into groups of whole shards holding at least `window` samples,
and shuffles the samples within each group. Ranks take interleaved positions of that one order, so at any moment
all ranks of a node read the same few shards, and the page cache serves every rank from one read. Readers
(`pipeline.train.data`) ask the kernel to read each shard file ahead sequentially when they first open it.

Every rank gets exactly `len(dataset) // num_replicas` samples (the remainder is dropped, as `drop_last=True` does),
whatever the shard sizes: DDP hangs when one rank runs out of batches before the others. The order is a function of
(seed, epoch) alone, and `skip` starts an epoch part-way, which is how a run resumes mid-epoch bit-identically.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class ShardSampler(Sampler[int]):
    """This rank's share of one epoch's shard-grouped order (see the module docstring)."""

    def __init__(self, shard_of: np.ndarray, num_replicas: int, rank: int, seed: int, window: int) -> None:
        """`shard_of[i]`: the shard of sample i; a shard's samples must be contiguous (index order groups them).
        `window`: samples shuffled together, at least (whole shards are added until a group reaches it)."""
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        if window < 1:
            raise ValueError(f"train.shuffle_window: {window} (must be >= 1)")
        self.num_replicas, self.rank, self.seed, self.window = num_replicas, rank, seed, window
        self.epoch, self.skip = 0, 0
        shard_of = np.asarray(shard_of)
        starts = np.flatnonzero(np.r_[True, shard_of[1:] != shard_of[:-1]]) if len(shard_of) else np.zeros(0, int)
        if len(np.unique(shard_of)) != len(starts):
            raise ValueError("ShardSampler: the samples of a shard must be contiguous")
        self.shard_ranges = list(zip(starts.tolist(), [*starts[1:].tolist(), len(shard_of)], strict=True))
        self.num_samples = len(shard_of) // num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_order(self) -> np.ndarray:
        """All ranks' samples of this epoch, in the order they are read: position k goes to rank k % num_replicas."""
        rng = np.random.Generator(np.random.PCG64([self.seed, self.epoch]))
        groups, group, size = [], [], 0
        for shard in rng.permutation(len(self.shard_ranges)):
            start, end = self.shard_ranges[shard]
            group.append(np.arange(start, end))
            size += end - start
            if size >= self.window:
                groups.append(np.concatenate(group))
                group, size = [], 0
        if group:
            groups.append(np.concatenate(group))
        order = np.concatenate([rng.permutation(g) for g in groups]) if groups else np.zeros(0, np.int64)
        return order[:self.num_samples * self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        mine = self.epoch_order()[self.rank::self.num_replicas]
        return itertools.islice(iter(mine.tolist()), self.skip, None)

    def __len__(self) -> int:
        return self.num_samples - self.skip
