"""Reading one split of the feature shards into memory, normalised with the training statistics."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch


def load_split(run_dir: Path, feature: str, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """([n, 1, bins, frames] float32 features, [n] int64 labels, label names) of one split, in index order."""
    features_dir = Path(run_dir) / "features"
    labels = json.loads((features_dir / "labels.json").read_text())
    stats = json.loads((features_dir / "stats.json").read_text())
    if feature not in stats:
        raise ValueError(f"{features_dir}: no training statistics for feature {feature!r}")
    rows_by_shard: dict[str, list[int]] = defaultdict(list)
    targets_by_shard: dict[str, list[int]] = defaultdict(list)
    with open(features_dir / "index.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] == split:
                rows_by_shard[row["shard"]].append(int(row["row"]))
                targets_by_shard[row["shard"]].append(labels.index(row["label"]))
    targets = [t for shard in rows_by_shard for t in targets_by_shard[shard]]
    parts = [np.load(features_dir / shard / f"{feature}.npy", mmap_mode="r")[rows]
             for shard, rows in rows_by_shard.items()]
    if not parts:
        raise ValueError(f"{features_dir}: the {split!r} split has no chunks")
    x = torch.from_numpy(np.concatenate(parts).astype(np.float32))
    mean = torch.tensor(stats[feature]["mean"], dtype=torch.float32).view(1, -1, 1)
    std = torch.tensor(stats[feature]["std"], dtype=torch.float32).view(1, -1, 1)
    x = ((x - mean) / std).unsqueeze(1).contiguous()
    return x, torch.tensor(targets, dtype=torch.int64), labels
