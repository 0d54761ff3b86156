"""The pieces a training run is built from, one function each: the model on its device, the learning rate, the
optimizer and its warm-up schedule, the sampler and loader of the training split.

The trainer builds a run from these; benchmarks that re-create part of the trainer call the same functions, so they
measure what training does.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.config import TrainConfig
from pipeline.train.models import build_model, is_convolutional
from pipeline.train.sampling import ShardSampler


def build_network(config: TrainConfig, n_labels: int, in_channels: int, n_bins: int | None,
                  device: torch.device) -> tuple[nn.Module, bool]:
    """(model on `device`, whether it runs channels-last). Initialisation draws from the global RNG."""
    model = build_model(config, n_labels, in_channels, n_bins).to(device)
    channels_last = config.channels_last and is_convolutional(config.model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, channels_last


def effective_lr(config: TrainConfig, world_size: int) -> float:
    """train.lr, scaled linearly with the ranks and accumulated micro-batches under `lr_scaling: linear`."""
    return config.lr * (world_size * config.grad_accumulation if config.lr_scaling == "linear" else 1)


def build_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam over the trainable parameters."""
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)


def build_loader(dataset: Dataset, config: TrainConfig, world_size: int, rank: int,
                 device: torch.device) -> tuple[ShardSampler, DataLoader]:
    """The shard-grouped shuffling sampler of this rank's share of the training split, and its loader. A dataset
    without a `shard_of` array (a synthetic one) is one shard."""
    shard_of = getattr(dataset, "shard_of", None)
    sampler = ShardSampler(np.zeros(len(dataset), np.int32) if shard_of is None else shard_of,
                           num_replicas=world_size, rank=rank, seed=config.seed, window=config.shuffle_window)
    # The loader's own generator keeps its per-epoch seed draw off the global RNG that drives dropout, so a resumed
    # run draws the same dropout masks as an uninterrupted one.
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, drop_last=True,
                        num_workers=config.loader_workers, persistent_workers=config.loader_workers > 0,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(config.seed))
    return sampler, loader


def optimizer_steps_per_epoch(sampler: ShardSampler, config: TrainConfig, train_samples: int) -> int:
    """Optimizer steps in one epoch of this rank's sampler; at least one, or a clear error."""
    steps = (len(sampler) // config.batch_size) // config.grad_accumulation
    if steps == 0:
        raise ValueError(f"train.batch_size: {config.batch_size} x grad_accumulation {config.grad_accumulation} x "
                         f"{sampler.num_replicas} ranks is more than the {train_samples} training chunks")
    return steps


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A linear ramp from near zero to the full learning rate over `warmup_steps` optimizer steps, then constant."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0)
