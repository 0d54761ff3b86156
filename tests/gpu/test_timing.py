"""The all-reduce and phase timings on CUDA: device time from CUDA events, read after the step, not the launch.

On NCCL the future DDP's comm hook returns completes as soon as the all-reduce is enqueued, so a host clock stopped
in its callback reads microseconds whatever the bucket's size. These tests make the device busy (or the bucket large)
so that the launch and the completion are far apart, and check that the recorded time is the completion's.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from pipeline.train.backend import DDPBackend
from pipeline.train.timing import AllReduceClock, PhaseClock, StepTimes, timed_allreduce_hook

BUCKET_FLOATS = 256 * 2**20 // 4  # a 256 MiB bucket


class Bucket:
    """The one method of `dist.GradBucket` the hook uses."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def buffer(self) -> torch.Tensor:
        return self.tensor


@pytest.fixture
def nccl_one_rank(tmp_path):
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    yield torch.device("cuda", 0)
    dist.destroy_process_group()


def device_seconds(work) -> float:
    """Device time of `work()` on the current stream, from CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    work()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000.0


def test_the_hook_records_device_time_to_completion_not_the_launch(nccl_one_rank):
    buffer = torch.ones(BUCKET_FLOATS, device=nccl_one_rank)
    reference = min(device_seconds(lambda: buffer.div_(1.0)) for _ in range(3))  # the hook's own averaging pass
    assert reference > 10e-6  # 512 MiB of memory traffic: tens of microseconds even on an H200 (~4.8 TB/s)
    dist.all_reduce(buffer)  # the first collective creates NCCL's communicator (host time, up to seconds)
    torch.cuda.synchronize()
    clock = AllReduceClock()
    for _ in range(3):
        torch.cuda._sleep(50_000_000)  # keep the stream busy: the launch returns long before the work runs
        future = timed_allreduce_hook(clock, Bucket(buffer))
        assert len(clock.spans) == 1  # NCCL: the callback ran at enqueue time
        future.wait()
        torch.cuda.synchronize()
        (span,) = clock.take_spans()
        start, end = span
        assert isinstance(start, torch.cuda.Event) and isinstance(end, torch.cuda.Event)
        seconds = start.elapsed_time(end) / 1000.0
        # The device ran at least the division (the hook starts its clock before it) and the all-reduce; a host
        # clock in the callback would have read only the launch of both.
        assert seconds >= 0.5 * reference, (seconds, reference)
        assert seconds < 1.0


def test_ddp_on_nccl_records_the_allreduce_within_the_step(nccl_one_rank):
    device = nccl_one_rank
    backend = DDPBackend()
    ddp = backend.wrap(nn.Linear(8192, 8192, bias=False).to(device), device)  # one 256 MiB gradient bucket
    x = torch.randn(64, 8192, device=device)
    clock, steps = PhaseClock(device), StepTimes()
    for _ in range(3):
        start = clock.mark()
        ddp(x).square().mean().backward()
        end = clock.mark()
        clock.add(1, allreduce_s=backend.allreduce_clock.take_spans(), step_s=[(start, end)])
        ddp.zero_grad(set_to_none=True)
    clock.flush(steps)  # read after the steps, as the trainer does
    for row in steps.rows[1:]:  # the first pays cuBLAS and NCCL set-up
        assert 10e-6 < row["allreduce_s"] <= row["step_s"], row
