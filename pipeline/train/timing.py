"""Where a training step's time goes: data wait, forward+backward, optimizer, and the gradient all-reduce.

The all-reduce runs on the process group's own threads while backward is still computing (DDP overlaps them), so
its time is measured separately, from launching each gradient bucket to its completion, through a DDP comm hook
that does exactly what DDP's default hook does (average the bucket across ranks). It is reported beside the step
time, not subtracted from it: the part of it hidden behind backward costs nothing.
"""

# No `from __future__ import annotations`: DDP checks the hook's annotations at runtime.
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from pipeline.io import atomic_write_csv

PHASES = ("data_s", "forward_backward_s", "optimizer_s", "allreduce_s", "step_s")


@dataclass
class AllReduceClock:
    """Seconds the gradient buckets of the current step spent in all-reduce, summed over buckets."""

    seconds: float = 0.0

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def timed_allreduce_hook(clock: AllReduceClock, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP's default all-reduce (mean over ranks), timed from launch to completion."""
    start = time.perf_counter()
    tensor = bucket.buffer().div_(dist.get_world_size())

    def finish(future: torch.futures.Future) -> torch.Tensor:
        clock.seconds += time.perf_counter() - start
        return future.value()[0]

    return dist.all_reduce(tensor, async_op=True).get_future().then(finish)


class PhaseClock:
    """Timestamps between phases of a step: CUDA events on a GPU (device time, including the GPU idling while it
    waits for data), `perf_counter` on CPU. Read after the step, when the GPU has caught up."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> object:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start: object, end: object) -> float:
        if not self.cuda:
            return end - start
        end.synchronize()
        return start.elapsed_time(end) / 1000.0


@dataclass
class StepTimes:
    """Per-step phase durations in seconds, one list entry per step, in the order of `PHASES`."""

    rows: list[dict[str, float]] = field(default_factory=list)

    def add(self, epoch: int, **phases: float) -> None:
        self.rows.append({"epoch": epoch, **phases})

    def mean(self, phase: str, epochs: set[int] | None = None) -> float:
        values = [r[phase] for r in self.rows if epochs is None or r["epoch"] in epochs]
        return sum(values) / len(values) if values else 0.0


def peak_memory_bytes(device: torch.device) -> int:
    """Peak GPU memory allocated by tensors on a GPU; peak resident set size of the process on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_step_times(path: Path, rows: list[dict[str, float]]) -> None:
    """The raw per-step timings of rank 0, so every mean in a report can be recomputed."""
    atomic_write_csv(path, rows, ["epoch", *PHASES])
