"""Real gloo ranks over deliberately uneven shards: every rank runs the same number of steps, so DDP never waits for
a rank that ran out of batches (it would hang until the collective timeout, and the run would fail)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from pipeline.train.data import split_rows
from tests.train.conftest import experiment
from tests.train.test_engine import metrics, pipeline


@pytest.mark.parametrize("world", [2, 3])
def test_uneven_shards_give_every_rank_the_same_steps(tmp_path, features, world):
    per_shard = Counter(row["shard"] for row in split_rows(features, "train"))
    sizes = list(per_shard.values())
    assert len(set(sizes)) > 1 and any(size % world for size in sizes), f"shards not uneven enough: {sizes}"
    # A window of one chunk: the order is shard after shard, so ranks cross shard boundaries at different places.
    # Three ranks on a 2-core machine: oversubscribed, slower, still correct.
    config = experiment(tmp_path, features, world_sizes=[world], batch_size=4, epochs=2, shuffle_window=1,
                        collective_timeout_s=30, skip_oversubscribed=False)
    result = pipeline("train", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    run = metrics(tmp_path / "run" / "configs" / f"ws{world}-cpu-bs4")
    train_chunks = sum(sizes)
    assert run["train_samples"] == train_chunks
    assert run["steps_per_epoch"] == (train_chunks // world) // 4
    assert [h["samples"] for h in run["history"]] == [run["steps_per_epoch"] * 4 * world] * 2
    log = (tmp_path / "run" / "configs" / f"ws{world}-cpu-bs4" / "train.log").read_text()
    assert "Traceback" not in log, json.dumps(run)[:500]
