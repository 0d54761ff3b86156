"""The training loop of one DDP rank: epochs of timed steps, validation, checkpoints, early stopping, clean stops.

Every rank builds the same `Trainer` and runs `fit()`. The loop checks for a stop signal every
`train.stop_check_every_steps` optimizer steps (the same steps on every rank) and after each epoch; on one, all
ranks stop at the same step, rank 0 writes the checkpoint, and `fit` returns without final metrics.

The host waits for the device only where it must: the stop-flag check (an all-reduce read on the host), the
TensorBoard loss every `train.log_every_steps`, checkpoints and the epoch's end. Step timings are read there too
(`PhaseClock.flush`), never inside the step they time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.config import TrainConfig
from pipeline.layout import RunLayout, TrainingPaths
from pipeline.records import EpochRecord
from pipeline.train import checkpoint
from pipeline.train.backend import Backend
from pipeline.train.builders import (
    build_loader,
    build_network,
    build_optimizer,
    build_scheduler,
    effective_lr,
    optimizer_steps_per_epoch,
)
from pipeline.train.checkpoint import Progress
from pipeline.train.data import build_dataset, read_labels
from pipeline.train.evaluation import EvalSettings, evaluate
from pipeline.train.models import describe_init, precision_of
from pipeline.train.preemption import StopFlag
from pipeline.train.timing import PhaseClock, StepTimes

LOWER_IS_BETTER = {"val_loss"}
EPOCH_SCALARS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1")
"""EpochRecord fields written to TensorBoard after each epoch (as `epoch/<name>`)."""


@dataclass
class RunFacts:
    """Facts about the run for metrics.json and model.pt, fixed when the trainer is built."""

    lr_effective: float
    steps_per_epoch: int
    warmup_steps: int
    init: str
    """How the weights started (see `describe_init`)."""
    in_channels: int
    n_bins: int
    """Rows of one input (feature bins, or image height): the lstm reads one frame of n_bins per time step."""
    channels_last: bool
    precision: str
    """What the forward pass really runs in: `fp32`, `bf16`, or bf16 with named exceptions (`precision_of`)."""
    resumed_from: dict | None
    """epoch, batches_done and optimizer_steps of the checkpoint the run resumed from, or None."""
    train_samples: int


@dataclass
class Outcome:
    """What a rank's training ended with."""

    model: nn.Module
    progress: Progress
    stop_signal: int | None
    """The signal that stopped training early (a checkpoint was written), or None when it ran to the end."""
    facts: RunFacts


class Trainer:
    """One rank's training run: built once (data, model, optimizer, schedule, loader, checkpoint), then `fit()`."""

    def __init__(self, layout: RunLayout, paths: TrainingPaths, config: TrainConfig, device: torch.device,
                 backend: Backend, stop: StopFlag, log: Callable[[str], None] = print, tensorboard=None) -> None:
        self.layout, self.paths, self.config, self.device = layout, paths, config, device
        self.backend, self.stop, self.log, self.tensorboard = backend, stop, log, tensorboard
        self.rank, self.world = backend.rank, backend.world_size
        torch.manual_seed(config.seed)  # the same on every rank: DDP also broadcasts rank 0's initial weights
        self.labels = read_labels(layout.root)
        self.train_set, self.in_channels = build_dataset(layout.root, config.input, config.feature, "train")
        self.val_set, _ = build_dataset(layout.root, config.input, config.feature, "val")
        self.n_bins = self.train_set[0][0].shape[1]
        self.model, self.channels_last = build_network(config, len(self.labels), self.in_channels, self.n_bins,
                                                       device)
        self.ddp = backend.wrap(self.model, device)
        self.lr = effective_lr(config, self.world)
        self.optimizer = backend.wrap_optimizer(build_optimizer(self.model, self.lr), self.model,
                                                config.grad_accumulation)
        self.sampler, self.loader = build_loader(self.train_set, config, self.world, self.rank, device)
        self.steps_per_epoch = optimizer_steps_per_epoch(self.sampler, config, len(self.train_set))
        self.warmup_steps = round(config.warmup_epochs * self.steps_per_epoch)
        self.scheduler = build_scheduler(self.optimizer, self.warmup_steps)
        self.autocast = config.precision == "bf16" and device.type == "cuda"
        self.stop_check_every = every_steps(config.stop_check_every_steps, device)
        self.log_every = every_steps(config.log_every_steps, device)
        self.eval_settings = EvalSettings(device, config.batch_size, config.loader_workers, self.channels_last,
                                          self.autocast)
        self.loss_fn = nn.CrossEntropyLoss()
        self.clock = PhaseClock(device)
        self.resumed_from: dict | None = None
        self.stop_signal: int | None = None
        self._start_from(Progress())

    @classmethod
    def build(cls, layout: RunLayout, paths: TrainingPaths, config: TrainConfig, device: torch.device,
              backend: Backend, stop: StopFlag, resume: bool, log: Callable[[str], None] = print,
              tensorboard=None) -> Trainer:
        """A trainer ready to `fit`, continuing from the run's checkpoint when `resume` and there is one."""
        trainer = cls(layout, paths, config, device, backend, stop, log, tensorboard)
        if resume and paths.checkpoint.exists():
            trainer.restore()
        return trainer

    def _start_from(self, progress: Progress) -> None:
        self.progress = progress
        self.steps = StepTimes(progress.step_times)  # appends to the list that checkpoints save

    # Checkpoints

    def state_dict(self, cuda_rng: checkpoint.CudaRngStates | None = None) -> dict[str, Any]:
        """What a checkpoint holds; `cuda_rng` carries every rank's CUDA generator (`gather_cuda_rng_states`)."""
        return checkpoint.state_dict(self.model, self.optimizer, self.scheduler, self.progress, cuda_rng, self.rank)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._start_from(checkpoint.load_state_dict(state, self.model, self.optimizer, self.scheduler, self.rank))

    def restore(self) -> None:
        """Continue from the run's checkpoint: weights, optimizer, schedule, RNG states and progress."""
        path = self.paths.checkpoint
        self.load_state_dict(checkpoint.read(path))
        progress = self.progress
        self.resumed_from = {"epoch": progress.epoch, "batches_done": progress.batches_done,
                             "optimizer_steps": progress.optimizer_steps}
        self.log(f"resumed from {path}: epoch {progress.epoch}, {progress.batches_done} batches done")

    def save_checkpoint(self) -> None:
        """Rank 0 writes the checkpoint (with every step's timings read); every rank waits for it."""
        self.clock.flush(self.steps)
        cuda_rng = checkpoint.gather_cuda_rng_states(self.device, self.backend)  # a collective on cuda ranks
        if self.rank == 0:
            checkpoint.save(self.paths.checkpoint, self.state_dict(cuda_rng))
        self.backend.barrier()

    # The loop

    def fit(self) -> Outcome:
        """Train until the last epoch, early stopping or a stop signal; returns what the run ended with."""
        while (self.progress.epoch <= self.config.epochs and not self.progress.stopped_early
               and self.stop_signal is None):
            self.train_epoch()
        return Outcome(self.model, self.progress, self.stop_signal, self.facts())

    def train_epoch(self) -> None:
        """The rest of the current epoch (all of it unless resumed mid-way), then validation and a checkpoint."""
        progress, config = self.progress, self.config
        epoch = progress.epoch
        self.sampler.set_epoch(epoch)
        self.sampler.skip = progress.batches_done * config.batch_size
        self.ddp.train()
        epoch_start = time.perf_counter()
        totals = torch.zeros(3, device=self.device)  # loss sum, correct, samples
        batches = iter(self.loader)
        while progress.batches_done < self.steps_per_epoch * config.grad_accumulation:
            self.stop_signal = self.step_and_check(batches, totals, epoch)
            if self.stop_signal is not None:
                break
            if config.checkpoint_every_steps and progress.optimizer_steps % config.checkpoint_every_steps == 0:
                self.save_checkpoint()
        if self.stop_signal is not None:
            self.save_checkpoint()
            self.log(f"stopped by signal {self.stop_signal} at epoch {epoch}, batch {progress.batches_done}; "
                     f"checkpoint {self.paths.checkpoint}")
            return
        self.end_epoch(epoch, totals, epoch_start)

    def step_and_check(self, batches: Iterator, totals: torch.Tensor, epoch: int) -> int | None:
        """`train_step`, then, every `stop_check_every` optimizer steps, the stop signal all ranks agree on (and the
        pending step timings read); None when training goes on."""
        self.train_step(batches, totals, epoch)
        if self.progress.optimizer_steps % self.stop_check_every:
            return None
        stop_signal = self.stop.agreed(self.backend, self.device)
        self.clock.flush(self.steps)  # the host has just waited for the device: reading is free
        return stop_signal

    def train_step(self, batches: Iterator, totals: torch.Tensor, epoch: int) -> None:
        """One optimizer step: `grad_accumulation` micro-batches forward and backward, then the update, each phase
        marked (read later, `PhaseClock.flush`); adds the micro-batches' loss sum, correct predictions and samples to
        `totals`. Nothing here waits for the device unless the TensorBoard loss is due."""
        clock, accumulation, progress = self.clock, self.config.grad_accumulation, self.progress
        step_start = clock.mark()
        data, forward_backward = [], []
        for micro in range(accumulation):
            fetch = clock.mark()
            xb, yb = self.next_batch(batches)
            computed = clock.mark()
            loss, logits = self.forward_backward_step(xb, yb, sync=micro == accumulation - 1)
            backward_done = clock.mark()
            data.append((fetch, computed))
            forward_backward.append((computed, backward_done))
            # torch.full, not torch.tensor: a host-to-device copy of a Python number would wait for the device
            totals += torch.stack([loss.detach() * len(yb), (logits.argmax(1) == yb).sum().float(),
                                   torch.full((), float(len(yb)), device=self.device)])
            progress.batches_done += 1
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()  # set_to_none, torch's default (Horovod's optimizer takes no argument)
        progress.optimizer_steps += 1
        step_end = clock.mark()
        clock.add(epoch, data_s=data, forward_backward_s=forward_backward, optimizer_s=[(backward_done, step_end)],
                  allreduce_s=self.backend.allreduce_clock.take_spans(), step_s=[(step_start, step_end)])
        if self.tensorboard is not None and progress.optimizer_steps % self.log_every == 0:
            self.tensorboard.add_scalar("train/loss", loss.item(), progress.optimizer_steps)
            self.tensorboard.add_scalar("train/lr", self.scheduler.get_last_lr()[0], progress.optimizer_steps)

    def next_batch(self, batches: Iterator) -> tuple[torch.Tensor, torch.Tensor]:
        """The next training batch on the device, in the model's memory format."""
        xb, yb = next(batches)
        xb, yb = xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb, yb

    def forward_backward_step(self, xb: torch.Tensor, yb: torch.Tensor,
                              sync: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward of one micro-batch; gradients are all-reduced only when `sync` (the last micro-batch
        of a step). Returns (loss, logits)."""
        with nullcontext() if sync else self.backend.no_sync(self.ddp):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                logits = self.ddp(xb)
                loss = self.loss_fn(logits.float(), yb)
            (loss / self.config.grad_accumulation).backward()
        return loss, logits

    def end_epoch(self, epoch: int, totals: torch.Tensor, epoch_start: float) -> None:
        """Validation, the epoch's record, early stopping, its log line and scalars, and the checkpoint."""
        progress = self.progress
        self.backend.all_reduce(totals)
        record = self.epoch_record(epoch, totals, self.validate(), epoch_start)
        progress.history.append(record.to_dict())  # checkpoints keep plain dicts
        _track_early_stopping(progress, record.to_dict(), self.config)
        self.log(f"epoch {epoch}/{self.config.epochs}: loss {record.train_loss:.4f} val acc "
                 f"{record.val_accuracy:.3f} ({record.epoch_time_s:.1f} s)"
                 + (" - stopping early" if progress.stopped_early else ""))
        if self.tensorboard is not None:
            for key in EPOCH_SCALARS:
                self.tensorboard.add_scalar(f"epoch/{key}", getattr(record, key), epoch)
        progress.epoch, progress.batches_done = epoch + 1, 0
        self.save_checkpoint()
        self.stop_signal = self.stop.agreed(self.backend, self.device)
        if self.stop_signal is not None:
            self.log(f"stopped by signal {self.stop_signal} after epoch {epoch}; checkpoint {self.paths.checkpoint}")

    def epoch_record(self, epoch: int, totals: torch.Tensor, val: dict, epoch_start: float) -> EpochRecord:
        """The epoch as all ranks agree on it; its time runs from the epoch's start to now (validation included)."""
        return EpochRecord(epoch=epoch, train_loss=(totals[0] / totals[2]).item(),
                           train_accuracy=(totals[1] / totals[2]).item(), val_loss=val["loss"],
                           val_accuracy=val["accuracy"], val_balanced_accuracy=val["balanced_accuracy"],
                           val_macro_f1=val["macro_f1"], val_eer=val["eer"],
                           epoch_time_s=time.perf_counter() - epoch_start, samples=int(totals[2].item()),
                           resumed_mid_epoch=self.sampler.skip > 0)

    # Evaluation

    def validate(self) -> dict:
        """Metrics of the model on the validation split (the same on every rank)."""
        return evaluate(self.model, self.val_set, self.labels, self.eval_settings, self.backend)

    def test(self) -> dict:
        """Metrics of the model on the test split (the same on every rank)."""
        test_set, _ = build_dataset(self.layout.root, self.config.input, self.config.feature, "test")
        return evaluate(self.model, test_set, self.labels, self.eval_settings, self.backend)

    def facts(self) -> RunFacts:
        return RunFacts(lr_effective=self.lr, steps_per_epoch=self.steps_per_epoch, warmup_steps=self.warmup_steps,
                        init=describe_init(self.config), in_channels=self.in_channels, n_bins=self.n_bins,
                        channels_last=self.channels_last, precision=precision_of(self.config.model, self.autocast),
                        resumed_from=self.resumed_from, train_samples=len(self.train_set))


GPU_EVERY_STEPS = 10
"""Default cadence of the stop-flag check and the TensorBoard loss on GPU ranks, where each costs a host sync."""


def every_steps(configured: int | None, device: torch.device) -> int:
    """`train.stop_check_every_steps` / `train.log_every_steps`: as configured, or by default every step on CPU
    ranks (the host is the device: nothing to wait for) and every `GPU_EVERY_STEPS` on GPU ranks."""
    if configured is not None:
        return configured
    return GPU_EVERY_STEPS if device.type == "cuda" else 1


def _track_early_stopping(progress: Progress, record: dict, config: TrainConfig) -> None:
    value = record[config.early_stopping_metric]
    sign = -1.0 if config.early_stopping_metric in LOWER_IS_BETTER else 1.0
    if value is not None and not math.isnan(value) and (progress.best is None or sign * value > sign * progress.best):
        progress.best, progress.epochs_without_improvement = value, 0
    else:
        progress.epochs_without_improvement += 1
    patience = config.early_stopping_patience
    progress.stopped_early = bool(patience) and progress.epochs_without_improvement >= patience
