"""Checkpoints that make a preempted or crashed run end exactly where an uninterrupted one would.

A checkpoint holds everything that decides the rest of the run: model and optimizer and scheduler state, the
position in the epoch (the sampler's order is a function of seed and epoch, so the batches done are enough), the
RNG states that drive dropout, and the history and step timings measured so far. It is written to a temporary
file and renamed, so a run killed mid-write (or one whose disk filled up) still has its previous checkpoint.

Checkpoints and model.pt live in shared, often group-writable run folders, and unpickling a file can run any code
it names. So both are read by `read`, which unpickles plain data only (`torch.load(weights_only=True)`): tensors,
numbers, strings, lists, tuples, dicts. Everything saved here is such data; checkpoints of earlier versions also
hold numpy's RNG state as an ndarray, and exactly the four numpy globals that rebuild that array are allowed, for
that load only.
"""

from __future__ import annotations

import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.io import atomic_write

try:  # numpy 2 (the pinned one); numpy 1 keeps the same function in numpy.core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover
    from numpy.core.multiarray import _reconstruct

LEGACY_NUMPY_GLOBALS = [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
"""What unpickling the uint32 ndarray of an older checkpoint's numpy RNG state (`np.random.get_state()`) needs: an
array rebuilt from its dtype (uint32's dtype class sets its state) and bytes, no other code. Files written now hold
none of them."""


class UnsafeFileError(RuntimeError):
    """A checkpoint or model file names code to run when unpickled (or objects this pipeline never saves)."""


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
    state = {"torch": torch.get_rng_state(), "numpy": numpy_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda_by_rank"] = dict(cuda_rng) if cuda_rng is not None else {rank: torch.cuda.get_rng_state(device)}
    return state


def set_rng_state(state: dict[str, Any], device: torch.device, rank: int = 0) -> None:
    """Restore the host RNG states, and on a cuda rank its own GPU's generator from the rank's saved state.

    A checkpoint of an older version holds rank 0's `get_rng_state_all()` under `cuda`: a cuda rank takes its own
    device's entry of it. A rank without a saved state keeps its generator as seeded."""
    torch.set_rng_state(state["torch"])
    set_numpy_rng_state(state["numpy"])
    random.setstate(state["python"])
    if device.type != "cuda":
        return
    own = state.get("cuda_by_rank", {}).get(rank)
    legacy = state.get("cuda") or []
    if own is None and "cuda_by_rank" not in state and device.index is not None and device.index < len(legacy):
        own = legacy[device.index]
    if own is not None:
        torch.cuda.set_rng_state(own, device)


def numpy_rng_state() -> dict[str, Any]:
    """numpy's global RNG state as plain data: `get_state(legacy=False)` with the MT19937 key as an int64 tensor
    (an ndarray would need numpy's globals to unpickle)."""
    state = np.random.get_state(legacy=False)
    inner = state["state"]
    return {**state, "state": {"key": torch.from_numpy(inner["key"].astype(np.int64)), "pos": int(inner["pos"])}}


def set_numpy_rng_state(saved: dict[str, Any] | tuple) -> None:
    """Restore `numpy_rng_state()`, or the `get_state()` tuple older checkpoints hold."""
    if isinstance(saved, tuple):
        np.random.set_state(saved)
        return
    inner = saved["state"]
    np.random.set_state({**saved, "state": {"key": inner["key"].numpy().astype(np.uint32), "pos": inner["pos"]}})


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
               cuda_rng: CudaRngStates | None = None, rank: int | None = None) -> dict[str, Any]:
    """Everything a checkpoint holds, the RNG states as they are now. On cuda ranks pass `cuda_rng`
    (`gather_cuda_rng_states`, called on every rank) so each rank resumes its own generator; without it only the
    calling rank's (rank 0's) is saved. `rank`: the caller's (None: torch.distributed's, or 0 outside a group; a
    Horovod rank passes its own)."""
    rng = rng_state(_device_of(model), _rank() if rank is None else rank, cuda_rng)
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "progress": progress.__dict__, "rng": rng}


def load_state_dict(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, rank: int | None = None) -> Progress:
    """Restore every saved state in place (the RNG states last, each rank its own CUDA generator; `rank` as in
    `state_dict`) and return where training stands."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"], _device_of(model), _rank() if rank is None else rank)
    return Progress(**state["progress"])


def save(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint (`state_dict`) atomically (a temporary file in the same folder, then rename). Through a
    file object: then a full disk reaches `atomic_write` as ENOSPC, not as torch's errno-less RuntimeError."""
    atomic_write(path, lambda tmp: _save_to(tmp, state))


def _save_to(tmp: Path, state: dict[str, Any]) -> None:
    with open(tmp, "wb") as out:
        torch.save(state, out)


def read(path: Path) -> dict[str, Any]:
    """A checkpoint's or model.pt's state, on the CPU, unpickled as plain data only (see the module's docstring):
    the one loader of the files training writes. A file that names anything else raises `UnsafeFileError`, naming
    the file and what it holds, before any of it runs."""
    try:
        with torch.serialization.safe_globals(LEGACY_NUMPY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeFileError(_refusal(Path(path), err)) from None


def _refusal(path: Path, err: Exception) -> str:
    """Why `path` was not loaded: the globals it names beyond plain data (read from the pickle, none called)."""
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in LEGACY_NUMPY_GLOBALS}
    try:
        named = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in allowed]
    except Exception:  # a file torch cannot even list: the load's own error says what is wrong
        named = []
    holds = f"it names {', '.join(sorted(named))}" if named else f"it cannot be read as plain data ({err})"
    return (f"{path}: refused to load: {holds}, and loading it would run that code as you. Checkpoints and model.pt "
            "hold only tensors, numbers, strings, lists and dicts, so this file was not written by this pipeline "
            "(or was changed since). Remove it or replace it with one you trust (retraining writes a new one).")
