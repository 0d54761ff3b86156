"""The training order: equal samples per rank over uneven shards, shard-local reads, a function of (seed, epoch)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.train.sampling import ShardSampler

UNEVEN = [40, 400, 25, 3, 117]
"""Deliberately uneven shard sizes (585 samples): no world size divides them shard by shard."""


def shard_of(sizes: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(sizes)), sizes)


def ranks(world: int, window: int = 64, seed: int = 5, epoch: int = 0, sizes=UNEVEN) -> list[list[int]]:
    samplers = [ShardSampler(shard_of(sizes), world, rank, seed, window) for rank in range(world)]
    for sampler in samplers:
        sampler.set_epoch(epoch)
    return [list(sampler) for sampler in samplers]


@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_gets_the_same_number_of_samples_over_uneven_shards(world):
    for epoch in range(4):
        orders = ranks(world, epoch=epoch)
        assert {len(order) for order in orders} == {sum(UNEVEN) // world}
        assert all(len(order) == len(ShardSampler(shard_of(UNEVEN), world, 0, 5, 64)) for order in orders)
        everyone = [i for order in orders for i in order]
        assert len(set(everyone)) == len(everyone), "a sample went to two ranks"
        assert len(everyone) == sum(UNEVEN) - sum(UNEVEN) % world  # only the remainder is dropped


def test_the_order_is_a_function_of_seed_and_epoch_and_changes_each_epoch():
    assert ranks(2, epoch=1) == ranks(2, epoch=1)
    assert ranks(2, epoch=1) != ranks(2, epoch=2)
    assert ranks(2, epoch=1, seed=6) != ranks(2, epoch=1)


def test_reads_stay_within_groups_of_whole_shards():
    """The epoch's order is a sequence of groups of whole shards, each at least `window` samples (the last takes
    what is left): a prefix of the order ends a group exactly where the shards it touched are all complete."""
    owner = shard_of(UNEVEN)
    order = ShardSampler(owner, 1, 0, seed=1, window=64).epoch_order()
    assert sorted(order.tolist()) == list(range(sum(UNEVEN)))
    group_ends = [k for k in range(1, len(order) + 1)
                  if sum(UNEVEN[s] for s in set(owner[order[:k]].tolist())) == k]
    sizes = np.diff([0, *group_ends])
    assert group_ends[-1] == len(order)
    assert len(sizes) > 1 and all(size >= 64 for size in sizes[:-1])


def test_a_window_as_large_as_the_split_is_one_global_shuffle():
    order = ShardSampler(shard_of(UNEVEN), 1, 0, seed=1, window=10**6).epoch_order()
    owner = shard_of(UNEVEN)[order]
    assert (np.diff(owner) != 0).sum() > 200  # shards interleave everywhere, not shard after shard


def test_skip_starts_the_epoch_part_way_through_the_same_order():
    sampler = ShardSampler(shard_of(UNEVEN), 3, 1, seed=2, window=50)
    sampler.set_epoch(7)
    whole = list(sampler)
    sampler.skip = 30
    assert list(sampler) == whole[30:]
    assert len(sampler) == len(whole) - 30


def test_a_shard_split_in_two_places_is_refused():
    with pytest.raises(ValueError, match="contiguous"):
        ShardSampler(np.array([0, 0, 1, 1, 0]), 1, 0, 0, 8)


def test_a_bad_window_names_the_key():
    with pytest.raises(ValueError, match="train.shuffle_window"):
        ShardSampler(shard_of(UNEVEN), 1, 0, 0, 0)
