"""The training sweep: which runs an experiment has (backends x world sizes x batch sizes x repeats) and what each
is called.

Shared by the launcher, the SLURM scripts and the report, and free of torch, so planning a sweep or reading its
results never imports the training stack. Where a run executes (`cpu` or `cuda`) is decided by the caller: the
launcher looks at this machine's GPUs, `pipeline submit` at what the config asks SLURM for.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.config_types import ExperimentConfig, TrainConfig

BACKENDS = ("ddp", "horovod")
"""train.backend(s): torch DistributedDataParallel, or Horovod where it was built (`./setup.sh --with-horovod`)."""

NAME = re.compile(r"ws(\d+)-(cpu|cuda)-bs(\d+)(?:-(horovod))?(?:-r(\d+))?")
"""A run's name: `ws2-cpu-bs32` (the only run of its configuration) or `ws2-cpu-bs32-r2` (repeat 2); a Horovod
run has `-horovod` after the batch (`ws2-cpu-bs32-horovod-r2`), so DDP runs keep the names they always had."""

REPEAT_SUFFIX = re.compile(r"-r(\d+)$")
"""How a repeat's name ends: `ws2-cpu-bs32-r2` is repeat 2 of configuration `ws2-cpu-bs32`."""

SWEEP_ONLY = {"backends", "world_sizes", "batch_sizes", "batch_size", "scaling", "repeats", "device",
              "skip_oversubscribed", "max_restarts", "requeue"}
"""TrainConfig keys that shape the sweep or its scheduling, not one run (whose own values replace them)."""


@dataclass(frozen=True)
class TrainingRun:
    """One run of the sweep: a configuration (ranks, device, batch per rank, backend) and which repeat of it."""

    world_size: int
    device: str
    batch_size: int
    """Samples per step on each rank."""
    repeat: int = 0
    """k >= 1: repeat k of train.repeats, in its own folder; 0: the only run of its configuration (train.repeats 1),
    whose name has no suffix, so runs made before repeats existed keep their folders."""
    backend: str = "ddp"
    """`ddp` or `horovod` (`BACKENDS`)."""

    @property
    def configuration(self) -> str:
        """The name shared by all repeats: what the report aggregates over."""
        backend = "" if self.backend == "ddp" else f"-{self.backend}"
        return f"ws{self.world_size}-{self.device}-bs{self.batch_size}{backend}"

    @property
    def name(self) -> str:
        """The run's folder under configs/ and the name `--configuration` takes."""
        return f"{self.configuration}-r{self.repeat}" if self.repeat else self.configuration

    @classmethod
    def from_name(cls, name: str) -> TrainingRun:
        """The run a folder name stands for, without checking it against a config."""
        match = NAME.fullmatch(name)
        if not match:
            raise ValueError(f"{name!r}: expected a name like ws2-cuda-bs32 (or ws2-cuda-bs32-r1 with "
                             "train.repeats above 1, ws2-cuda-bs32-horovod for a Horovod run)")
        return cls(int(match[1]), match[2], int(match[3]), int(match[5] or 0), match[4] or "ddp")

    @classmethod
    def parse(cls, name: str, config: ExperimentConfig) -> TrainingRun:
        """The run a name stands for; it must be one that `plan` makes for the config."""
        try:
            run = cls.from_name(name)
        except ValueError as err:
            raise ValueError(f"--configuration {err}") from None
        if run.backend not in backends(config.train):
            raise ValueError(f"--configuration {name!r}: backend {run.backend} is not in the sweep's "
                             f"{backends(config.train)} (train.backends, or train.backend)")
        if run.world_size not in config.train.world_sizes:
            raise ValueError(f"--configuration {name!r}: world size {run.world_size} is not in train.world_sizes "
                             f"{config.train.world_sizes}")
        at_size = [b for n, b in configurations(config.train) if n == run.world_size]
        if run.batch_size not in at_size:
            ranks = f"{run.world_size} rank{'s' * (run.world_size != 1)}"
            raise ValueError(f"--configuration {name!r}: batch size {run.batch_size} per rank is not in the sweep at "
                             f"{ranks}, {at_size} (train.batch_sizes or train.batch_size, and "
                             f"train.scaling {config.train.scaling})")
        repeats = config.train.repeats
        if repeats == 1 and run.repeat:
            raise ValueError(f"--configuration {name!r}: train.repeats is 1, so names have no -r<k> suffix; "
                             f"use {run.configuration}")
        if repeats > 1 and not 1 <= run.repeat <= repeats:
            raise ValueError(f"--configuration {name!r}: train.repeats is {repeats}, so name one repeat from "
                             f"{run.configuration}-r1 to {run.configuration}-r{repeats}")
        return run


def split_repeat(name: str) -> tuple[str, int]:
    """(configuration, k) of a run's name; k is 0 for a name without a repeat suffix."""
    match = REPEAT_SUFFIX.search(name)
    return (name[:match.start()], int(match[1])) if match else (name, 0)


def repeat_seed(seed: int, repeat: int) -> int:
    """train.seed of repeat k (seed + k - 1; repeat 0, the only run, keeps the seed): model initialisation and
    data order differ between repeats."""
    return seed + max(repeat, 1) - 1


def backends(train: TrainConfig) -> list[str]:
    """The backends the sweep trains with: train.backends, or the one train.backend."""
    return train.backends or [train.backend]


def batch_sizes(config: ExperimentConfig | TrainConfig) -> list[int]:
    """The configured batch sizes: train.batch_sizes, or the one train.batch_size. Per rank at every world size in
    weak scaling; per rank at the fewest ranks in strong scaling (`configurations`)."""
    train = config if isinstance(config, TrainConfig) else config.train
    return train.batch_sizes or [train.batch_size]


def strong_batch(batch: int, fewest: int, world_size: int) -> int | None:
    """Batch per rank at `world_size` that keeps the global batch `batch x fewest` of the fewest-rank configuration;
    None when it does not divide evenly."""
    total = batch * fewest
    return total // world_size if total % world_size == 0 else None


def configurations(train: TrainConfig) -> list[tuple[int, int]]:
    """(world size, batch per rank) of every configuration of the sweep, by world size, each once: weak scaling
    keeps each batch per rank, strong scaling its global batch at the fewest ranks, both takes the union (the
    fewest-rank configurations belong to both). Strong batches that do not divide are left out here; the config
    check refuses them first."""
    fewest = min(train.world_sizes)
    found = []
    for n in train.world_sizes:
        for b in batch_sizes(train):
            if train.scaling in ("weak", "both"):
                found.append((n, b))
            strong = strong_batch(b, fewest, n)
            if train.scaling in ("strong", "both") and strong is not None:
                found.append((n, strong))
    return list(dict.fromkeys(found))


def plan(config: ExperimentConfig, device_for: Callable[[str, int], str]) -> list[TrainingRun]:
    """Every run of the sweep, each backend's after the previous one's, the repeats of a configuration next to each
    other; `device_for(train.device, world_size)` decides where each runs. With train.repeats 1 there is one run per
    configuration, without suffix."""
    repeats = range(1, config.train.repeats + 1) if config.train.repeats > 1 else [0]
    return [TrainingRun(n, device_for(config.train.device, n), b, k, backend)
            for backend in backends(config.train) for n, b in configurations(config.train) for k in repeats]
