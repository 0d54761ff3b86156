"""Where a training step's time goes: data wait, forward+backward, optimizer, and the gradient all-reduce.

The all-reduce runs on the process group's own threads (gloo) or stream (NCCL) while backward is still computing
(DDP overlaps them), so its time is measured separately, from launching each gradient bucket to its completion,
through a DDP comm hook that does exactly what DDP's default hook does (average the bucket across ranks). It is
reported beside the step time, not subtracted from it: the part of it hidden behind backward costs nothing.

Reading a clock must not cost the step it measures, so every mark is read later, in `PhaseClock.flush`:
- On CPU a mark is `perf_counter` (host time; gloo's future completes when the work is done, so the hook's
  callback stops the all-reduce's clock at completion).
- On a GPU a mark is a CUDA event recorded on the current stream (device time, including the GPU idling while it
  waits for data). NCCL's future completes as soon as the work is *enqueued*, so a host clock in the callback
  would read the launch only; the callback instead records an event on its current stream, which `Future.then`
  makes wait for the all-reduce's kernels, so the event fires when the all-reduce is done on the device. Events
  are read in `flush`, which the trainer calls where the host synchronises anyway (the stop-flag check every
  `train.stop_check_every_steps`, checkpoints, the epoch's end): no step waits for its own timing.
"""

# No `from __future__ import annotations`: DDP checks the hook's annotations at runtime.
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import torch
import torch.distributed as dist

from pipeline.io import atomic_write_csv
from pipeline.records import PHASES

Mark = Union[float, "torch.cuda.Event"]
Span = tuple[Mark, Mark]


def mark(cuda: bool) -> Mark:
    """Now: host time on CPU, or a timing event recorded on the current CUDA stream."""
    if not cuda:
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def elapsed(span: Span) -> float:
    """Seconds from a span's start to its end (waiting for the end event on a GPU)."""
    start, end = span
    if isinstance(start, float):
        return end - start
    end.synchronize()
    return start.elapsed_time(end) / 1000.0


@dataclass
class AllReduceClock:
    """Launch-to-completion spans of the gradient buckets of the current step (see the module's docstring)."""

    spans: list[Span] = field(default_factory=list)

    def take_spans(self) -> list[Span]:
        """The current step's spans, unread (the trainer reads them later, in `PhaseClock.flush`); starts the next
        step's list."""
        spans, self.spans = self.spans, []
        return spans

    def take(self) -> float:
        """Seconds of the current step's spans, read now (after the step's synchronisation on a GPU, or this waits
        for the all-reduce to finish); starts the next step's list."""
        return sum((elapsed(span) for span in self.take_spans()), 0.0)


def timed_allreduce_hook(clock: AllReduceClock, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP's default all-reduce (mean over ranks), timed from launch to completion on the device doing it."""
    tensor = bucket.buffer()
    cuda = tensor.is_cuda
    start = mark(cuda)
    tensor.div_(dist.get_world_size())

    def finish(future: torch.futures.Future) -> torch.Tensor:
        # gloo: runs when the work is done. NCCL: runs at enqueue time, on a stream made to wait for the work.
        clock.spans.append((start, mark(cuda)))
        return future.value()[0]

    return dist.all_reduce(tensor, async_op=True).get_future().then(finish)


class PhaseClock:
    """Marks between the phases of each step, kept until `flush` reads them into `StepTimes` rows."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.pending: list[tuple[int, dict[str, list[Span]]]] = []

    def mark(self) -> Mark:
        return mark(self.cuda)

    def seconds(self, start: Mark, end: Mark) -> float:
        """Seconds between two marks, read now (on a GPU this waits for `end`)."""
        return elapsed((start, end))

    def add(self, epoch: int, **phases: list[Span]) -> None:
        """One step's spans per phase (each phase the sum of its spans), read at the next `flush`."""
        self.pending.append((epoch, phases))

    def flush(self, steps: "StepTimes") -> None:
        """Read every pending step into `steps` (on a GPU this waits until the device has caught up)."""
        for epoch, phases in self.pending:
            steps.add(epoch, **{phase: sum((elapsed(span) for span in spans), 0.0)
                                for phase, spans in phases.items()})
        self.pending = []


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
    """Peak GPU memory reserved by the CUDA caching allocator (what the process holds, not only live tensors) on a
    GPU; peak resident set size of the process on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_reserved(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_step_times(path: Path, rows: list[dict[str, float]]) -> None:
    """The raw per-step timings of rank 0, so every mean in a report can be recomputed."""
    atomic_write_csv(path, rows, ["epoch", *PHASES])
