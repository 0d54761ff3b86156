"""Scoring a split with every rank: each scores every world-th sample, then all ranks see all scores.

All ranks get the same numbers, so decisions taken from them (early stopping) are the same on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from pipeline.train.metrics import classification_metrics


@dataclass(frozen=True)
class EvalSettings:
    """How inputs reach the model when scoring: the same for every split of a run (the trainer builds it once)."""

    device: torch.device
    batch_size: int
    loader_workers: int = 0
    channels_last: bool = False
    """Convolutional models run in channels-last memory format."""
    autocast: bool = False
    """The forward pass runs in bfloat16 (train.precision bf16 on a GPU)."""


class Group(Protocol):
    """The ranks scoring together: a training backend (`pipeline.train.backend`)."""

    rank: int
    world_size: int

    def all_gather_object(self, obj: object) -> list: ...


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, labels: list[str], settings: EvalSettings,
             group: Group | None = None) -> dict:
    """Metrics of `model` on `dataset` (loss, accuracy, balanced accuracy, macro F1, EER, confusion), scored by
    every rank of `group` (None: this process alone, as `pipeline evaluate` scores)."""
    device = settings.device
    was_training = model.training
    model.eval()
    rank, world = (group.rank, group.world_size) if group is not None else (0, 1)
    mine = list(range(rank, len(dataset), world))
    loader = DataLoader(Subset(dataset, mine), batch_size=settings.batch_size, num_workers=settings.loader_workers,
                        pin_memory=device.type == "cuda")
    scores, targets, losses = [], [], []
    for xb, yb in loader:
        xb = xb.to(device, non_blocking=True)
        if settings.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.autocast):
            logits = model(xb)
        logits = logits.float().cpu()
        losses.append(F.cross_entropy(logits, yb, reduction="none").numpy())
        scores.append(torch.softmax(logits, dim=1).numpy())
        targets.append(yb.numpy())
    part = (np.array(mine), *(np.concatenate(p) if p else np.empty(0) for p in (scores, targets, losses)))
    parts = [part]
    if world > 1:
        parts = group.all_gather_object(part)
    order = np.argsort(np.concatenate([p[0] for p in parts]))
    all_scores = np.concatenate([p[1].reshape(-1, len(labels)) for p in parts])[order]
    all_targets = np.concatenate([p[2] for p in parts]).astype(np.int64)[order]
    all_losses = np.concatenate([p[3] for p in parts])[order]
    model.train(was_training)
    return {"loss": float(all_losses.mean()), **classification_metrics(all_targets, all_scores, labels)}
