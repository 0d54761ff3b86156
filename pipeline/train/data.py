"""What the trainer reads: the feature shards (fast path: loaded once into memory) or the spectrogram images.

Feature shards are float16 `.npy` arrays memory-mapped and gathered split by split, then normalised with the
training statistics computed during preprocessing. Images are the PNGs the preprocessing wrote, decoded per sample
(that decoding is what loader workers are for) and normalised with ImageNet's mean and std, which is what the
pretrained torchvision backbones expect.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

from pipeline.layout import RunLayout

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_labels(run_dir: Path) -> list[str]:
    return json.loads(RunLayout(run_dir).features.labels.read_text())


def split_rows(run_dir: Path, split: str) -> list[dict]:
    """index.csv rows of one split, in index order."""
    index = RunLayout(run_dir).features.index
    if not index.is_file():
        raise FileNotFoundError(f"{index}: no features yet; run `pipeline preprocess CONFIG` first")
    with open(index, newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["split"] == split]
    if not rows:
        raise ValueError(f"{index}: the {split!r} split has no chunks")
    return rows


def normalise(x: torch.Tensor, stats: dict) -> torch.Tensor:
    """[n, bins, frames] -> [n, 1, bins, frames], standardised per bin with the training split's statistics."""
    mean = torch.tensor(stats["mean"], dtype=torch.float32).view(1, -1, 1)
    std = torch.tensor(stats["std"], dtype=torch.float32).view(1, -1, 1)
    return ((x - mean) / std).unsqueeze(1).contiguous()


def load_split(run_dir: Path, feature: str, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """([n, 1, bins, frames] float32 features, [n] int64 labels, label names) of one split, in index order."""
    features = RunLayout(run_dir).features
    labels = read_labels(run_dir)
    stats = json.loads(features.stats.read_text())
    if feature not in stats:
        raise ValueError(f"{features.folder}: no training statistics for feature {feature!r}")
    rows_by_shard: dict[str, list[int]] = defaultdict(list)
    targets_by_shard: dict[str, list[int]] = defaultdict(list)
    for row in split_rows(run_dir, split):
        rows_by_shard[row["shard"]].append(int(row["row"]))
        targets_by_shard[row["shard"]].append(labels.index(row["label"]))
    targets = [t for shard in rows_by_shard for t in targets_by_shard[shard]]
    parts = [np.load(features.shard(shard) / f"{feature}.npy", mmap_mode="r")[rows]
             for shard, rows in rows_by_shard.items()]
    x = torch.from_numpy(np.concatenate(parts).astype(np.float32))
    return normalise(x, stats[feature]), torch.tensor(targets, dtype=torch.int64), labels


def image_tensor(pixels: np.ndarray) -> torch.Tensor:
    """RGB pixels [..., H, W, 3] (uint8) -> [..., 3, H, W] float, normalised with ImageNet's mean and std."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).float().div(255.0).movedim(-1, -3)
    return (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


class SpectrogramImages(Dataset):
    """The per-chunk images of one feature and split as [3, H, W] float tensors."""

    def __init__(self, run_dir: Path, split: str, feature: str) -> None:
        labels = read_labels(run_dir)
        rows = split_rows(run_dir, split)
        missing = [r for r in rows if not r.get(f"image_{feature}")]
        if missing:
            raise ValueError(f"{RunLayout(run_dir).features.index}: chunks without {feature} images "
                             f"(preprocess with `preprocess.images: true` and {feature} in "
                             f"`preprocess.image_features` to train on them), e.g. {missing[0]['path']}")
        self.paths = [RunLayout(run_dir).root / r[f"image_{feature}"] for r in rows]
        self.targets = torch.tensor([labels.index(r["label"]) for r in rows], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        with Image.open(self.paths[i]) as image:
            pixels = np.asarray(image.convert("RGB"))
        return image_tensor(pixels), self.targets[i]


def build_dataset(run_dir: Path, input_kind: str, feature: str, split: str) -> tuple[Dataset, int]:
    """(dataset, input channels) of one split for `train.input`."""
    if input_kind == "images":
        return SpectrogramImages(run_dir, split, feature), 3
    x, y, _ = load_split(run_dir, feature, split)
    return TensorDataset(x, y), 1
