"""The training loop of one DDP rank: epochs of timed steps, validation, checkpoints, early stopping, clean stops.

Every rank runs this same function. The loop checks for a stop signal after each optimizer step; on one, all
ranks stop at the same step, rank 0 writes the checkpoint, and the function returns without final metrics.
"""

from __future__ import annotations

import itertools
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

from pipeline.config import TrainConfig
from pipeline.train import checkpoint
from pipeline.train.checkpoint import Progress
from pipeline.train.data import build_dataset, read_labels
from pipeline.train.evaluation import evaluate
from pipeline.train.models import build_model, describe_init, is_convolutional
from pipeline.train.preemption import StopFlag
from pipeline.train.timing import AllReduceClock, PhaseClock, StepTimes, timed_allreduce_hook

LOWER_IS_BETTER = {"val_loss"}


class ResumableSampler(DistributedSampler):
    """A DistributedSampler that can start mid-epoch: the order stays a function of (seed, epoch) alone."""

    skip: int = 0

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return super().__len__() - self.skip


@dataclass
class Outcome:
    """What a rank's training ended with."""

    model: nn.Module
    progress: Progress
    stop_signal: int | None
    """The signal that stopped training early (a checkpoint was written), or None when it ran to the end."""
    details: dict
    """Facts about the run for metrics.json (learning rate, steps per epoch, how the model was initialised)."""


def train(run_dir: Path, out: Path, config: TrainConfig, device: torch.device, resume: bool,
          stop: StopFlag, log=print, tensorboard=None) -> Outcome:
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(config.seed)  # the same on every rank: DDP also broadcasts rank 0's initial weights
    labels = read_labels(run_dir)
    train_set, in_channels = build_dataset(run_dir, config.input, config.feature, "train")
    val_set, _ = build_dataset(run_dir, config.input, config.feature, "val")
    n_bins = train_set[0][0].shape[1]  # the lstm reads one feature frame of n_bins per time step
    model = build_model(config, len(labels), in_channels, n_bins).to(device)
    channels_last = config.channels_last and is_convolutional(config.model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    allreduce_clock = AllReduceClock()
    ddp.register_comm_hook(allreduce_clock, timed_allreduce_hook)
    lr = config.lr * (world * config.grad_accumulation if config.lr_scaling == "linear" else 1)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    sampler = ResumableSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=config.seed,
                               drop_last=True)
    # The loader's own generator keeps its per-epoch seed draw off the global RNG that drives dropout, so a resumed
    # run draws the same dropout masks as an uninterrupted one.
    loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, drop_last=True,
                        num_workers=config.loader_workers, persistent_workers=config.loader_workers > 0,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(config.seed))
    steps_per_epoch = (len(sampler) // config.batch_size) // config.grad_accumulation
    if steps_per_epoch == 0:
        raise ValueError(f"train.batch_size: {config.batch_size} x grad_accumulation {config.grad_accumulation} x "
                         f"{world} ranks is more than the {len(train_set)} training chunks")
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0)
    checkpoint_path = out / "checkpoints" / "last.pt"
    progress = Progress()
    resumed_from = None
    if resume and checkpoint_path.exists():
        progress = checkpoint.load(checkpoint_path, model, optimizer, scheduler)
        resumed_from = {"epoch": progress.epoch, "batches_done": progress.batches_done,
                        "optimizer_steps": progress.optimizer_steps}
        log(f"resumed from {checkpoint_path}: epoch {progress.epoch}, {progress.batches_done} batches done")
    autocast = config.precision == "bf16" and device.type == "cuda"
    loss_fn = nn.CrossEntropyLoss()
    clock = PhaseClock(device)
    steps = StepTimes(progress.step_times)  # appends to the list that checkpoints save
    stop_signal = None

    def save_checkpoint() -> None:
        if rank == 0:
            checkpoint.save(checkpoint_path, model, optimizer, scheduler, progress)
        dist.barrier()

    while progress.epoch <= config.epochs and not progress.stopped_early and stop_signal is None:
        epoch = progress.epoch
        sampler.set_epoch(epoch)
        sampler.skip = progress.batches_done * config.batch_size
        ddp.train()
        epoch_start = time.perf_counter()
        totals = torch.zeros(3, device=device)  # loss sum, correct, samples
        batches = iter(loader)
        while progress.batches_done < steps_per_epoch * config.grad_accumulation:
            step_start = clock.mark()
            data_s = forward_backward_s = 0.0
            for micro in range(config.grad_accumulation):
                fetch = clock.mark()
                xb, yb = next(batches)
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                if channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                computed = clock.mark()
                last_micro = micro == config.grad_accumulation - 1
                with ddp.no_sync() if not last_micro else nullcontext():
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                        logits = ddp(xb)
                        loss = loss_fn(logits.float(), yb)
                    (loss / config.grad_accumulation).backward()
                backward_done = clock.mark()
                data_s += clock.seconds(fetch, computed)
                forward_backward_s += clock.seconds(computed, backward_done)
                totals += torch.stack([loss.detach() * len(yb), (logits.argmax(1) == yb).sum().float(),
                                       torch.tensor(float(len(yb)), device=device)])
                progress.batches_done += 1
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            progress.optimizer_steps += 1
            step_end = clock.mark()
            steps.add(epoch, data_s=data_s, forward_backward_s=forward_backward_s,
                      optimizer_s=clock.seconds(backward_done, step_end), allreduce_s=allreduce_clock.take(),
                      step_s=clock.seconds(step_start, step_end))
            if tensorboard is not None:
                tensorboard.add_scalar("train/loss", loss.item(), progress.optimizer_steps)
                tensorboard.add_scalar("train/lr", scheduler.get_last_lr()[0], progress.optimizer_steps)
            stop_signal = stop.agreed(device)
            if stop_signal is not None:
                break
            if config.checkpoint_every_steps and progress.optimizer_steps % config.checkpoint_every_steps == 0:
                save_checkpoint()
        if stop_signal is not None:
            save_checkpoint()
            log(f"stopped by signal {stop_signal} at epoch {epoch}, batch {progress.batches_done}; "
                f"checkpoint {checkpoint_path}")
            break
        dist.all_reduce(totals)
        val = evaluate(model, val_set, labels, device, config.batch_size, config.loader_workers, channels_last,
                       autocast)
        record = {"epoch": epoch, "train_loss": (totals[0] / totals[2]).item(),
                  "train_accuracy": (totals[1] / totals[2]).item(), "val_loss": val["loss"],
                  "val_accuracy": val["accuracy"], "val_balanced_accuracy": val["balanced_accuracy"],
                  "val_macro_f1": val["macro_f1"], "val_eer": val["eer"],
                  "epoch_time_s": time.perf_counter() - epoch_start, "samples": int(totals[2].item()),
                  "resumed_mid_epoch": sampler.skip > 0}
        progress.history.append(record)
        _track_early_stopping(progress, record, config)
        log(f"epoch {epoch}/{config.epochs}: loss {record['train_loss']:.4f} val acc {val['accuracy']:.3f} "
            f"({record['epoch_time_s']:.1f} s)" + (" - stopping early" if progress.stopped_early else ""))
        if tensorboard is not None:
            for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1"):
                tensorboard.add_scalar(f"epoch/{key}", record[key], epoch)
        progress.epoch, progress.batches_done = epoch + 1, 0
        save_checkpoint()
        stop_signal = stop.agreed(device)
        if stop_signal is not None:
            log(f"stopped by signal {stop_signal} after epoch {epoch}; checkpoint {checkpoint_path}")
    details = {"lr_effective": lr, "steps_per_epoch": steps_per_epoch, "warmup_steps": warmup_steps,
               "init": describe_init(config), "in_channels": in_channels, "n_bins": n_bins,
               "channels_last": channels_last, "precision": "bf16" if autocast else "fp32",
               "resumed_from": resumed_from,
               "train_samples": len(train_set)}
    return Outcome(model, progress, stop_signal, details)


def _track_early_stopping(progress: Progress, record: dict, config: TrainConfig) -> None:
    value = record[config.early_stopping_metric]
    sign = -1.0 if config.early_stopping_metric in LOWER_IS_BETTER else 1.0
    if value is not None and not math.isnan(value) and (progress.best is None or sign * value > sign * progress.best):
        progress.best, progress.epochs_without_improvement = value, 0
    else:
        progress.epochs_without_improvement += 1
    patience = config.early_stopping_patience
    progress.stopped_early = bool(patience) and progress.epochs_without_improvement >= patience

