"""Checkpoints that make a preempted or crashed run end exactly where an uninterrupted one would.

A checkpoint holds everything that decides the rest of the run: model and optimizer and scheduler state, the
position in the epoch (the sampler's order is a function of seed and epoch, so the batches done are enough), the
RNG states that drive dropout, and the history and step timings measured so far. It is written to a temporary
file and renamed, so a run killed mid-write still has its previous checkpoint.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.io import atomic_write


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 1
    """Epoch in progress (1-based)."""
    batches_done: int = 0
    """Loader batches of `epoch` already trained on; a resumed run skips them."""
    optimizer_steps: int = 0
    """Optimizer steps over the whole run, which drive the learning-rate schedule."""
    history: list[dict] = field(default_factory=list)
    """One entry per finished epoch (loss, validation metrics, epoch time)."""
    step_times: list[dict] = field(default_factory=list)
    """Rank 0's per-step timings so far."""
    best: float | None = None
    """Best value of the early-stopping metric so far."""
    epochs_without_improvement: int = 0
    stopped_early: bool = False


CudaRngStates = dict[int, torch.Tensor]
"""The CUDA generator state of each rank's own GPU, by rank (a ByteTensor each, on the CPU)."""


def rng_state(device: torch.device, rank: int = 0, cuda_rng: CudaRngStates | None = None) -> dict[str, Any]:
    """The host RNG states, and on a cuda rank the CUDA generator states: `cuda_rng` (every rank's, gathered by
    `gather_cuda_rng_states`) or else this rank's own. A CPU rank never touches torch.cuda."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda_by_rank"] = dict(cuda_rng) if cuda_rng is not None else {rank: torch.cuda.get_rng_state(device)}
    return state


def set_rng_state(state: dict[str, Any], device: torch.device, rank: int = 0) -> None:
    """Restore the host RNG states, and on a cuda rank its own GPU's generator from the rank's saved state.

    A checkpoint of an older version holds rank 0's `get_rng_state_all()` under `cuda`: a cuda rank takes its own
    device's entry of it. A rank without a saved state keeps its generator as seeded."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if device.type != "cuda":
        return
    own = state.get("cuda_by_rank", {}).get(rank)
    legacy = state.get("cuda") or []
    if own is None and "cuda_by_rank" not in state and device.index is not None and device.index < len(legacy):
        own = legacy[device.index]
    if own is not None:
        torch.cuda.set_rng_state(own, device)


def gather_cuda_rng_states(device: torch.device, backend: Any) -> CudaRngStates | None:
    """Every rank's CUDA generator state, on every rank (a collective: all ranks call it, e.g. before rank 0 writes
    a checkpoint); None on CPU ranks, which call no collective (all ranks of a run share a device type)."""
    if device.type != "cuda":
        return None
    own = torch.cuda.get_rng_state(device)
    rows = torch.zeros(backend.world_size, own.numel(), dtype=torch.int32, device=device)
    rows[backend.rank] = own.to(device=device, dtype=torch.int32)
    backend.all_reduce(rows, op="sum")  # each row is one rank's, zeros elsewhere: the sum is the gather
    return {rank: row.to(torch.uint8).cpu() for rank, row in enumerate(rows)}


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _rank() -> int:
    distributed = torch.distributed
    return distributed.get_rank() if distributed.is_available() and distributed.is_initialized() else 0


def state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, progress: Progress,
               cuda_rng: CudaRngStates | None = None) -> dict[str, Any]:
    """Everything a checkpoint holds, the RNG states as they are now. On cuda ranks pass `cuda_rng`
    (`gather_cuda_rng_states`, called on every rank) so each rank resumes its own generator; without it only the
    calling rank's (rank 0's) is saved."""
    rng = rng_state(_device_of(model), _rank(), cuda_rng)
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "progress": progress.__dict__, "rng": rng}


def load_state_dict(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler) -> Progress:
    """Restore every saved state in place (the RNG states last, each rank its own CUDA generator) and return where
    training stands."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"], _device_of(model), _rank())
    return Progress(**state["progress"])


def save(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint (`state_dict`) atomically (a temporary file in the same folder, then rename)."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def read(path: Path) -> dict[str, Any]:
    """A checkpoint's state, on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=False)
