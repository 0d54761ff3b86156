"""The distributed backend as one small object: joining the group, wrapping the model and the optimizer,
collectives, leaving.

The trainer, the worker and evaluation ask this object for everything distributed, so the two backends are two
classes with the same methods (`Backend`): `DDPBackend` here, `HorovodBackend` in `pipeline.train.horovod_backend`
(imported only when asked for: Horovod is an optional build). `backend_for(train.backend)` picks one, or says clearly
why it cannot.
"""

from __future__ import annotations

import gc
import os
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from pipeline.train.distributed import DistributedEnv, export_rendezvous
from pipeline.train.timing import AllReduceClock, timed_allreduce_hook

REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
BUILD_COMMAND = "./setup.sh --with-horovod"
"""What builds Horovod into the .venv (scripts/build_horovod.sh)."""


class Backend(Protocol):
    """What the trainer needs of a distributed backend."""

    name: str
    allreduce_clock: AllReduceClock
    """Spans of the current step's gradient all-reduce (see `pipeline.train.timing`)."""

    def setup(self, env: DistributedEnv, device: torch.device, timeout_s: float | None = None) -> None: ...
    @property
    def rank(self) -> int: ...
    @property
    def world_size(self) -> int: ...
    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module: ...
    def wrap_optimizer(self, optimizer: torch.optim.Optimizer, model: nn.Module,
                       accumulation: int) -> torch.optim.Optimizer: ...
    def no_sync(self, wrapped: nn.Module) -> AbstractContextManager: ...
    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> None: ...
    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None: ...
    def all_gather_object(self, obj: object) -> list: ...
    def barrier(self) -> None: ...
    def teardown(self, failing: bool = False) -> None: ...


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

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer, model: nn.Module,
                       accumulation: int) -> torch.optim.Optimizer:
        """DDP averages gradients in backward: the optimizer stays as it is."""
        return optimizer

    def no_sync(self, wrapped: nn.Module) -> AbstractContextManager:
        """Backward passes inside accumulate gradients locally, without an all-reduce."""
        return wrapped.no_sync()

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> None:
        """In place: the sum (or `max`) of `tensor` over all ranks."""
        dist.all_reduce(tensor, op=REDUCE_OPS[op])

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        dist.broadcast(tensor, src=src)

    def all_gather_object(self, obj: object) -> list:
        """`obj` of every rank, by rank (pickled: for small results such as evaluation scores)."""
        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, obj)
        return parts

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


def backend_for(name: str) -> Backend:
    """The backend `train.backend` names. DDP is always available; Horovod only where it was built
    (`./setup.sh --with-horovod`): its release does not build against torch >= 2.1 unpatched."""
    if name == "ddp":
        return DDPBackend()
    if name != "horovod":
        raise ValueError(f"train.backend: {name!r}: expected ddp or horovod")
    try:
        import horovod.torch  # noqa: F401
    except ImportError as err:
        raise RuntimeError(
            f"train.backend: 'horovod' is not importable here ({err}). Its last release, 0.28.1, does not build "
            f"against torch >= 2.1 as released; `{BUILD_COMMAND}` builds it patched into .venv (about 6 minutes "
            "on 2 cores, once); or use backend: ddp") from err
    from pipeline.train.horovod_backend import HorovodBackend

    return HorovodBackend()
