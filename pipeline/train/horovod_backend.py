"""Horovod as the training backend, with the methods of `DDPBackend`, so the trainer does not know which one runs.

Where DDP all-reduces buckets of gradients during backward, Horovod's `DistributedOptimizer` launches each
gradient's all-reduce from a hook on its accumulator (Horovod's background thread fuses what is ready every cycle)
and waits for all of them in `optimizer.step()`. So the time a step waits for communication sits in the optimizer
phase for Horovod and in forward+backward for DDP; the report compares the split with that in mind.

The all-reduce clock: from the step's first gradient launch to `synchronize()` having every averaged gradient,
read on the host. Horovod completes an operation (on gloo and on NCCL alike) only once it is done, so the host's
clock is the completion time here; it is one span per step, overlapping backward as DDP's bucket spans do.

Ranks come from horovodrun (which sets HOROVOD_RANK and the rest) or from srun, where `export_slot` derives them
from SLURM's variables and the launcher (`pipeline.train.horovod_launch`) runs the gloo rendezvous.
"""

from __future__ import annotations

import gc
import os
import time
from contextlib import AbstractContextManager, nullcontext

import horovod.torch as hvd
import torch
from torch import nn

from pipeline.train.distributed import DistributedEnv
from pipeline.train.timing import AllReduceClock

REDUCE_OPS = {"sum": hvd.Sum, "max": hvd.Max}


class HorovodBackend:
    """Horovod with gloo (CPU) or NCCL (GPU) and its DistributedOptimizer."""

    name = "horovod"

    def __init__(self) -> None:
        self.allreduce_clock = AllReduceClock()

    def setup(self, env: DistributedEnv, device: torch.device, timeout_s: float | None = None) -> None:
        """Join the job's Horovod ranks on `device`. `timeout_s` bounds gloo's collectives (a peer that died fails
        the others instead of hanging them), as `train.collective_timeout_s` does for DDP."""
        export_slot(env)
        if timeout_s:
            os.environ.setdefault("HOROVOD_GLOO_TIMEOUT_SECONDS", str(int(timeout_s)))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        hvd.init()
        if hvd.rank() != env.rank or hvd.size() != env.world_size:
            raise RuntimeError(f"Horovod placed this process at rank {hvd.rank()} of {hvd.size()}, the launcher at "
                               f"rank {env.rank} of {env.world_size} ({env.launcher})")

    @property
    def rank(self) -> int:
        return hvd.rank()

    @property
    def world_size(self) -> int:
        return hvd.size()

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model itself, with rank 0's initial weights (and buffers) broadcast to all, as DDP does. Horovod
        takes contiguous tensors only, so a channels-last weight travels as a contiguous copy."""
        with torch.no_grad():
            for value in model.state_dict().values():
                self.broadcast(value, src=0)
        return model

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer, model: nn.Module,
                       accumulation: int) -> torch.optim.Optimizer:
        """Horovod's DistributedOptimizer around `optimizer`: it averages the gradients of every `accumulation`-th
        backward pass (the others accumulate locally, as under DDP's `no_sync`), timed by `allreduce_clock`."""
        distributed = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                               compression=ContiguousGradients,
                                               backward_passes_per_step=accumulation, op=hvd.Average)
        _time_allreduce(distributed, self.allreduce_clock)
        return distributed

    def no_sync(self, wrapped: nn.Module) -> AbstractContextManager:
        """Nothing to do: the optimizer counts the backward passes of a step (`backward_passes_per_step`)."""
        return nullcontext()

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> None:
        """In place: the sum (or `max`) of `tensor` over all ranks. Horovod takes contiguous tensors only, so a
        channels-last one travels as a contiguous copy (here and in `broadcast`)."""
        if tensor.is_contiguous():
            hvd.allreduce_(tensor, op=REDUCE_OPS[op])
        else:
            tensor.copy_(hvd.allreduce(tensor.contiguous(), op=REDUCE_OPS[op]))

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        if tensor.is_contiguous():
            hvd.broadcast_(tensor, root_rank=src)
        else:
            tensor.copy_(hvd.broadcast(tensor.contiguous(), root_rank=src))

    def all_gather_object(self, obj: object) -> list:
        return hvd.allgather_object(obj)

    def barrier(self) -> None:
        hvd.barrier()

    def teardown(self, failing: bool = False) -> None:
        """Leave: a `failing` rank without the final barrier (its peers may be dead or elsewhere, see
        `DDPBackend.teardown`), the others after it."""
        gc.collect()
        if not hvd.is_initialized():
            return
        if not failing:
            hvd.barrier()
        hvd.shutdown()


class ContiguousGradients:
    """Horovod's compression interface, used to hand it contiguous gradients: the gradient of a channels-last
    weight (the convolutional models on `train.channels_last`) is all-reduced as a contiguous copy and put back
    channels-last. Horovod refuses other tensors ("Tensor is required to be contiguous"); DDP copies into its
    buckets anyway. Costs one copy of each such gradient per step."""

    @staticmethod
    def compress(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.memory_format | None]:
        if tensor.is_contiguous():
            return tensor, None
        return tensor.contiguous(), torch.channels_last

    @staticmethod
    def decompress(tensor: torch.Tensor, ctx: torch.memory_format | None) -> torch.Tensor:
        return tensor if ctx is None else tensor.contiguous(memory_format=ctx)


def _time_allreduce(optimizer: torch.optim.Optimizer, clock: AllReduceClock) -> None:
    """Record one span per step in `clock`: the first gradient launch to the end of `synchronize()`.

    Horovod's optimizer calls `self._allreduce_grad_async(p)` from its hooks and `self.synchronize()` from `step`;
    both are looked up on the instance, so instance attributes wrap them (Horovod is pinned at 0.28.1)."""
    launch, synchronize = optimizer._allreduce_grad_async, optimizer.synchronize
    first: list[float] = []

    def timed_launch(parameter: torch.Tensor):
        if not first:
            first.append(time.perf_counter())
        return launch(parameter)

    def timed_synchronize() -> None:
        synchronize()
        if first:
            clock.spans.append((first.pop(), time.perf_counter()))

    optimizer._allreduce_grad_async = timed_launch
    optimizer.synchronize = timed_synchronize


def export_slot(env: DistributedEnv) -> None:
    """Under srun, the variables horovodrun would give each rank, from SLURM's (horovodrun has set them already).
    The ranks of a node are its consecutive tasks, as srun's block distribution places them and as the launcher's
    rendezvous plan (`horovod_launch.slot_plan`) assumes; HOROVOD_HOSTNAME is the node's index in the step."""
    if "HOROVOD_RANK" in os.environ or env.launcher != "srun":
        return
    node = env.rank // env.local_world_size
    os.environ.update(HOROVOD_RANK=str(env.rank), HOROVOD_SIZE=str(env.world_size),
                      HOROVOD_LOCAL_RANK=str(env.local_rank), HOROVOD_LOCAL_SIZE=str(env.local_world_size),
                      HOROVOD_CROSS_RANK=str(node), HOROVOD_CROSS_SIZE=str(env.nodes),
                      HOROVOD_HOSTNAME=f"node{node}")
