"""The synthetic-data phase (`train.synthetic_steps`): is the run input-bound or compute-bound?

Horovod's advice for low scaling is to compare the real-data throughput with that of synthetic data made on the
device. After training, every rank runs `train.synthetic_steps` optimizer steps (after `WARMUP_STEPS`) through the
trainer's own DDP model, optimizer, autocast, gradient accumulation and batch per rank, on one random batch of the
training input's shape made once on the device: no loader, no host-to-device copy. The phase is timed from a
barrier with the device synchronised to the device synchronised again after the last step; the slowest rank's time
is the phase's (an all-reduce of the max), so every rank agrees on it.

The phase trains the model further, so it runs last (`results.finish`, after the test scores, the rank-divergence
check and model.pt): nothing it changes is read afterwards, and it writes no checkpoint and no step timings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from pipeline.train.trainer import Trainer

WARMUP_STEPS = 2
"""Untimed steps before the phase (allocator, caches, cuDNN's choice of kernels)."""


@dataclass
class SyntheticSpeed:
    """What the phase measured, as all ranks agree on it."""

    samples_per_second: float
    """Samples of all ranks per second of the phase."""
    step_s: float
    """Mean optimizer step: the phase's time over its steps."""


def synthetic_batch(trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch per rank of random inputs of the training input's shape and random labels, on the device, in the
    model's memory format; drawn from a generator of its own (the global random state is left alone)."""
    config, device = trainer.config, trainer.device
    sample = trainer.train_set[0][0]
    generator = torch.Generator(device=device).manual_seed(config.seed + trainer.rank)
    xb = torch.randn((config.batch_size, *sample.shape), generator=generator, device=device, dtype=sample.dtype)
    yb = torch.randint(0, len(trainer.labels), (config.batch_size,), generator=generator, device=device)
    if trainer.channels_last:
        xb = xb.contiguous(memory_format=torch.channels_last)
    return xb, yb


def synthetic_step(trainer: Trainer, xb: torch.Tensor, yb: torch.Tensor) -> None:
    """One optimizer step as `Trainer.train_step` takes it (`grad_accumulation` micro-batches, the all-reduce on the
    last, the update), without the loader, the phase clock or the progress counters."""
    accumulation = trainer.config.grad_accumulation
    for micro in range(accumulation):
        trainer.forward_backward_step(xb, yb, sync=micro == accumulation - 1)
    trainer.optimizer.step()
    trainer.scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.backend.allreduce_clock.take_spans()  # the all-reduce timings of training's steps only


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_throughput(trainer: Trainer, steps: int) -> SyntheticSpeed:
    """Time `steps` optimizer steps on synthetic data on every rank (a collective: all ranks call it)."""
    xb, yb = synthetic_batch(trainer)
    trainer.ddp.train()
    for _ in range(WARMUP_STEPS):
        synthetic_step(trainer, xb, yb)
    synchronize(trainer.device)
    trainer.backend.barrier()
    synchronize(trainer.device)
    start = time.perf_counter()
    for _ in range(steps):
        synthetic_step(trainer, xb, yb)
    synchronize(trainer.device)
    phase = torch.tensor(time.perf_counter() - start, dtype=torch.float64, device=trainer.device)
    trainer.backend.all_reduce(phase, op="max")
    phase_s = float(phase.item())
    samples = steps * trainer.config.batch_size * trainer.config.grad_accumulation * trainer.world
    return SyntheticSpeed(samples_per_second=samples / phase_s, step_s=phase_s / steps)
