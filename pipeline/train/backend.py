"""The distributed backend as one small object: joining the group, wrapping the model, collectives, leaving.

The trainer and the worker ask this object for everything distributed (evaluation's all_gather aside), so another
backend (Horovod, later) is one more class with the same methods. `backend_for(train.backend)` picks it, or says
clearly why it cannot.
"""

from __future__ import annotations

import gc
import os
from contextlib import AbstractContextManager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from pipeline.train.distributed import DistributedEnv, export_rendezvous
from pipeline.train.timing import AllReduceClock, timed_allreduce_hook

REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}


class DDPBackend:
    """torch.distributed with gloo (CPU) or NCCL (GPU) and DistributedDataParallel."""

    name = "ddp"

    def __init__(self) -> None:
        self.allreduce_clock = AllReduceClock()
        """Seconds the gradient all-reduce of the current step took (see `pipeline.train.timing`)."""

    def setup(self, env: DistributedEnv, device: torch.device, timeout_s: float | None = None) -> None:
        """Join the process group of the job `env` describes, on `device`. A collective that waits longer than
        `timeout_s` (`train.collective_timeout_s`; None: torch's default, 30 min) fails on gloo and NCCL alike; on
        NCCL the watchdog then ends the process, so a rank whose peer died cannot hang the job."""
        export_rendezvous(env)
        if device.type == "cuda":
            torch.cuda.set_device(device)
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        timeout = timedelta(seconds=timeout_s) if timeout_s else None
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)

    @property
    def rank(self) -> int:
        return dist.get_rank()

    @property
    def world_size(self) -> int:
        return dist.get_world_size()

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DDP around `model` (rank 0's initial weights broadcast to all), its all-reduce timed."""
        ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        ddp.register_comm_hook(self.allreduce_clock, timed_allreduce_hook)
        return ddp

    def no_sync(self, wrapped: nn.Module) -> AbstractContextManager:
        """Backward passes inside accumulate gradients locally, without an all-reduce."""
        return wrapped.no_sync()

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> None:
        """In place: the sum (or `max`) of `tensor` over all ranks."""
        dist.all_reduce(tensor, op=REDUCE_OPS[op])

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        dist.broadcast(tensor, src=src)

    def barrier(self) -> None:
        dist.barrier()

    def teardown(self, failing: bool = False) -> None:
        """Leave the group while Python is fully alive.

        DDP's reducer keeps the process group alive through reference cycles. If it survives until interpreter
        shutdown, a gloo thread can reach for the GIL mid-finalisation and abort the rank ("terminate called
        without an active exception"), so it is collected and the group destroyed here.

        A `failing` rank (one that raised) skips the final barrier: its peers are in some other collective, or
        dead, and waiting for them would keep this rank (and so the job) alive until the collective timeout. It
        leaves at once, so the launcher sees it exit and ends the others.
        """
        gc.collect()
        if not dist.is_initialized():
            return
        if failing and dist.get_backend() == "nccl":
            # Destroying an NCCL group with a collective in flight can block; aborting does not (torch >= 2.6).
            dist.distributed_c10d._abort_process_group()
        else:
            if not failing:
                dist.barrier()
            dist.destroy_process_group()
        gc.collect()


def backend_for(name: str) -> DDPBackend:
    """The backend `train.backend` names. DDP is always available; Horovod only where it was built, which
    torch >= 2.1 rules out."""
    if name == "ddp":
        return DDPBackend()
    try:
        import horovod.torch  # noqa: F401
    except ImportError as err:
        raise RuntimeError(
            "train.backend: 'horovod' is not importable here (its last release, 0.28.1, does not build against "
            "torch >= 2.1, which this project pins); use backend: ddp") from err
    raise RuntimeError("train.backend: 'horovod' is importable, but this version of the pipeline trains with DDP "
                       "only; use backend: ddp")
