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


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, progress: Progress) -> dict[str, Any]:
    """Everything a checkpoint holds, the RNG states as they are now."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "progress": progress.__dict__, "rng": rng_state()}


def load_state_dict(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler) -> Progress:
    """Restore every saved state in place (the RNG states last) and return where training stands."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return Progress(**state["progress"])


def save(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint (`state_dict`) atomically (a temporary file in the same folder, then rename)."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def read(path: Path) -> dict[str, Any]:
    """A checkpoint's state, on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=False)
