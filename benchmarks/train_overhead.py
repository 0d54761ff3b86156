"""Instrumentation overhead: the trainer's instrumented step vs a bare training loop, same model, same data.

Issue target (on a GPU): the instrumentation costs < 2% of the step.

What it measures, in one process (world size 1: a one-rank gloo group on CPU, NCCL on a GPU, so DDP and its
all-reduce run as in training), `torch.set_num_threads(--threads)`:

- bare: forward, cross-entropy, backward, optimizer step, zero_grad over DDP with its default all-reduce: no
  clocks, no stop flag, no TensorBoard, no running totals;
- instrumented: the trainer's own `Trainer.step_and_check` (`train_step`: phase marks, the timed all-reduce hook,
  running totals, the TensorBoard loss every `log_every_steps`; then the stop-flag all-reduce and reading the marks
  every `stop_check_every_steps`), on a Trainer whose parts come from the trainer's builders.

Both arms get one model each, initialised identically (`build_network` with the same seed), their own Adam, and
the same batches (a fixed set of random batches of the demo's shape, already in memory and cycled, so loading is
the same cost in both and not what is compared). After a warm-up of each arm, a repeat runs `--steps` steps of
each arm, alternating which arm goes first, so drift and noise hit both alike; it gives samples/s of each and the
ratio instrumented/bare. The JSON has min/median/max (and mean/std) of each over `--repeats` repeats, the overhead
`1 - ratio`, the cadence used, the machine and the versions. Writes results/benchmarks/train_overhead.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from benchlib import RESULTS, CpuMeter, command_line, environment, now, spread, write_result
from torch import nn

from pipeline.config import TrainConfig
from pipeline.train.backend import DDPBackend
from pipeline.train.builders import build_network, build_optimizer, build_scheduler
from pipeline.train.checkpoint import Progress
from pipeline.train.preemption import StopFlag
from pipeline.train.timing import PhaseClock, StepTimes
from pipeline.train.trainer import Trainer, every_steps

CLASSES = 4  # the demo's speakers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cnn", choices=["cnn", "lstm", "resnet50", "densenet121"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bins", type=int, default=64, help="feature bins (the demo: 64 mels)")
    parser.add_argument("--frames", type=int, default=101, help="frames per chunk (the demo: 1 s at a 10 ms hop)")
    parser.add_argument("--steps", type=int, default=10, help="steps of each arm per repeat")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each arm first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU), like train.threads_per_rank")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast on a GPU")
    parser.add_argument("--out", type=Path, default=RESULTS / "train_overhead.json")
    return parser.parse_args(argv)


def instrumented_trainer(config: TrainConfig, device: torch.device, backend: DDPBackend, tensorboard,
                         bins: int) -> Trainer:
    """A Trainer with what `step_and_check` uses, built by the trainer's own builders (no run folder needed)."""
    trainer = Trainer.__new__(Trainer)
    trainer.config, trainer.device, trainer.backend, trainer.stop = config, device, backend, StopFlag()
    trainer.tensorboard, trainer.log = tensorboard, lambda text: None
    torch.manual_seed(config.seed)
    trainer.model, trainer.channels_last = build_network(config, CLASSES, 1, bins, device)
    trainer.ddp = backend.wrap(trainer.model, device)
    trainer.optimizer = build_optimizer(trainer.model, config.lr)
    trainer.scheduler = build_scheduler(trainer.optimizer, 0)
    trainer.autocast = config.precision == "bf16" and device.type == "cuda"
    trainer.stop_check_every = every_steps(config.stop_check_every_steps, device)
    trainer.log_every = every_steps(config.log_every_steps, device)
    trainer.loss_fn, trainer.clock = nn.CrossEntropyLoss(), PhaseClock(device)
    trainer.progress = Progress()
    trainer.steps = StepTimes(trainer.progress.step_times)
    return trainer


class Bare:
    """The same model, optimizer and loss without any instrumentation."""

    def __init__(self, config: TrainConfig, device: torch.device, bins: int) -> None:
        torch.manual_seed(config.seed)
        self.model, self.channels_last = build_network(config, CLASSES, 1, bins, device)
        self.ddp = nn.parallel.DistributedDataParallel(
            self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.optimizer = build_optimizer(self.model, config.lr)
        self.loss_fn, self.device = nn.CrossEntropyLoss(), device
        self.autocast = config.precision == "bf16" and device.type == "cuda"

    def step(self, batches) -> None:
        xb, yb = next(batches)
        xb, yb = xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss = self.loss_fn(self.ddp(xb).float(), yb)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def cycle(batches: list[tuple[torch.Tensor, torch.Tensor]]):
    while True:
        yield from batches


def timed(run_steps, steps: int, device: torch.device) -> float:
    """Seconds for `steps` steps, the device caught up at both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    run_steps(steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def measure(args: argparse.Namespace, device: torch.device, scratch: Path) -> dict:
    from torch.utils.tensorboard import SummaryWriter

    config = TrainConfig(model=args.model, batch_size=args.batch_size, precision=args.precision, seed=0)
    backend = DDPBackend()
    tensorboard = SummaryWriter(log_dir=str(scratch / "tensorboard"))  # rank 0 of a run writes one
    trainer = instrumented_trainer(config, device, backend, tensorboard, args.bins)
    bare = Bare(config, device, args.bins)
    generator = torch.Generator().manual_seed(1)
    data = [(torch.randn(args.batch_size, 1, args.bins, args.frames, generator=generator),
             torch.randint(0, CLASSES, (args.batch_size,), generator=generator)) for _ in range(8)]
    if device.type == "cuda":
        data = [(x.pin_memory(), y.pin_memory()) for x, y in data]
    bare_batches, trainer_batches = cycle(data), cycle(data)
    totals = torch.zeros(3, device=device)
    arms = {"bare": lambda n: [bare.step(bare_batches) for _ in range(n)],
            "instrumented": lambda n: [trainer.step_and_check(trainer_batches, totals, 1) for _ in range(n)]}
    for run_steps in arms.values():
        timed(run_steps, args.warmup, device)
    per_arm = {name: [] for name in arms}
    ratios = []
    for repeat in range(args.repeats):
        order = list(arms) if repeat % 2 == 0 else list(reversed(arms))
        speed = {name: args.steps * args.batch_size / timed(arms[name], args.steps, device) for name in order}
        for name, value in speed.items():
            per_arm[name].append(value)
        ratios.append(speed["instrumented"] / speed["bare"])
    tensorboard.close()
    trainer.clock.flush(trainer.steps)
    return {"samples_per_second": {name: summary(values) for name, values in per_arm.items()},
            "ratio_instrumented_to_bare": summary(ratios),
            "overhead": {"median": 1 - statistics.median(ratios), "min": 1 - max(ratios), "max": 1 - min(ratios)},
            "cadence": {"stop_check_every_steps": trainer.stop_check_every, "log_every_steps": trainer.log_every},
            "instrumented_mean_step_s": trainer.steps.mean("step_s")}


def summary(values: list[float]) -> dict:
    return {**spread(values), "median": statistics.median(values)}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    torch.set_num_threads(args.threads)
    meter = CpuMeter()
    with tempfile.TemporaryDirectory() as scratch:
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{scratch}/init", rank=0,
                                world_size=1)
        try:
            measured = measure(args, device, Path(scratch))
        finally:
            dist.destroy_process_group()
    ratio = measured["ratio_instrumented_to_bare"]
    result = {"benchmark": "train_overhead", "date": now(), "command": command_line(),
              "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
              "device": device.type, "environment": environment(args.threads), **measured,
              "machine_load": meter.stop()}
    notes = [f"instrumented / bare samples/s: median {ratio['median']:.3f} (min {ratio['min']:.3f}, max "
             f"{ratio['max']:.3f}) over {args.repeats} repeats of {args.steps} steps per arm on {device.type}; "
             f"overhead median {measured['overhead']['median']:.1%}.",
             "The issue's < 2% target is for GPU steps; on CPU the host is the device, so nothing waits for it, "
             "and the overhead is the Python work of the marks, the totals and the timed hook."]
    write_result(args.out, result, notes, result["machine_load"], "train_overhead", args.repeats)


if __name__ == "__main__":
    sys.exit(main())
