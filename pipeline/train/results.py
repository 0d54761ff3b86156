"""What a finished run leaves behind: the test-set scores (all ranks), and on rank 0 metrics.json (a
`pipeline.records.TrainingMetrics`), steps.csv, the test confusion matrix and model.pt."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.config import ExperimentConfig, TrainConfig, to_dict
from pipeline.fingerprint import code_version
from pipeline.io import atomic_write
from pipeline.layout import TrainingPaths
from pipeline.records import EpochRecord, TrainingMetrics
from pipeline.train.backend import Backend
from pipeline.train.distributed import DistributedEnv
from pipeline.train.environment import describe_environment
from pipeline.train.metrics import write_confusion
from pipeline.train.synthetic import SyntheticSpeed, synthetic_throughput
from pipeline.train.timing import PHASES, StepTimes, peak_memory_bytes, write_step_times
from pipeline.train.trainer import Outcome, Trainer


@dataclass
class RunEnd:
    """What the run ended with, measured on every rank, beside the trainer's outcome."""

    outcome: Outcome
    test: dict
    """Scores on the test split (`evaluate`)."""
    divergence: float
    """Largest difference of any rank's parameters from rank 0's."""
    peak_memory: int
    """Peak memory, max over ranks."""
    restarts: int
    device_reason: str | None
    """Why the launcher gave the run its device."""
    wall_s: float
    synthetic: SyntheticSpeed | None = None
    """The synthetic-data phase after training (`train.synthetic_steps`), or None when it did not run."""


def finish(experiment: ExperimentConfig, trainer: Trainer, outcome: Outcome, paths: TrainingPaths,
           env: DistributedEnv, repeat: int, restarts: int, device_reason: str | None, wall_s: float) -> None:
    """Test-set evaluation on all ranks; rank 0 writes the outputs. With `train.synthetic_steps`, the synthetic-data
    phase runs on all ranks once everything that reads the trained weights is done (it trains them further), and
    metrics.json, written last, records it."""
    test = trainer.test()
    divergence = ranks_in_sync(outcome.model, trainer.backend)
    peak = torch.tensor(peak_memory_bytes(trainer.device), dtype=torch.float64, device=trainer.device)
    trainer.backend.all_reduce(peak, op="max")
    config = experiment.train
    end = RunEnd(outcome, test, divergence, int(peak.item()), restarts, device_reason, wall_s)
    if env.rank == 0:
        write_outputs(paths, end, trainer.labels, config)
    if config.synthetic_steps:
        end.synthetic = synthetic_throughput(trainer, config.synthetic_steps)
        trainer.log(f"synthetic data, {config.synthetic_steps} steps: {end.synthetic.samples_per_second:.1f} "
                    f"samples/s, {end.synthetic.step_s * 1000:.1f} ms per step")
    if env.rank == 0:
        training_metrics(end, config, trainer.labels, trainer.device, env, repeat).write(paths.metrics)


def write_outputs(paths: TrainingPaths, end: RunEnd, labels: list[str], config: TrainConfig) -> None:
    """steps.csv, the test confusion matrix and model.pt (final weights, labels and what rebuilds the model)."""
    outcome = end.outcome
    write_step_times(paths.steps, outcome.progress.step_times)
    write_confusion(paths.confusion_test, end.test["confusion"], labels, f"test, {paths.name}")
    model_state = {"model": outcome.model.state_dict(), "labels": labels, "train": to_dict(config),
                   "in_channels": outcome.facts.in_channels, "n_bins": outcome.facts.n_bins}
    atomic_write(paths.model, lambda tmp: torch.save(model_state, tmp))


def steady_epochs(history: list[EpochRecord]) -> list[EpochRecord]:
    """The epochs speed is measured on: not the first, which pays one-off costs (allocator, caches), nor ones
    resumed mid-way, unless nothing else is left."""
    steady = history[1:] or history
    return [h for h in steady if not h.resumed_mid_epoch] or steady


def speed(history: list[EpochRecord], step_times: list[dict], world_size: int) -> dict:
    """Samples per second (all ranks, and per rank), mean step phases and epoch time over the steady epochs."""
    steady = steady_epochs(history)
    samples_per_second = sum(h.samples for h in steady) / sum(h.epoch_time_s for h in steady)
    steps = StepTimes(step_times)
    epochs = {h.epoch for h in steady}
    return {"samples_per_second": samples_per_second, "samples_per_second_per_rank": samples_per_second / world_size,
            **{f"mean_{phase}": steps.mean(phase, epochs) for phase in PHASES},
            "epoch_time_s": sum(h.epoch_time_s for h in steady) / len(steady)}


def training_metrics(end: RunEnd, config: TrainConfig, labels: list[str], device: torch.device,
                     env: DistributedEnv, repeat: int) -> TrainingMetrics:
    """metrics.json of the run."""
    outcome, facts, test, world = end.outcome, end.outcome.facts, end.test, env.world_size
    progress = outcome.progress
    history = [EpochRecord.from_dict(h) for h in progress.history]
    # What DDP (or Horovod) all-reduces per optimizer step: one gradient per trainable parameter (the report's
    # projection model).
    trainable = [p for p in outcome.model.parameters() if p.requires_grad]
    measured = speed(history, progress.step_times, world)
    return TrainingMetrics(
        world_size=world, nodes=env.nodes, device=device.type, precision=facts.precision, model=config.model,
        input=config.input, feature=config.feature, init=facts.init, batch_size_per_rank=config.batch_size,
        grad_accumulation=config.grad_accumulation,
        global_batch_size=config.batch_size * world * config.grad_accumulation, epochs=config.epochs,
        epochs_run=len(history), stopped_early=progress.stopped_early, lr=config.lr, lr_effective=facts.lr_effective,
        warmup_steps=facts.warmup_steps, train_samples=facts.train_samples, steps_per_epoch=facts.steps_per_epoch,
        repeat=repeat, seed=config.seed, parameters=sum(p.numel() for p in trainable),
        gradient_bytes=sum(p.numel() * p.element_size() for p in trainable),
        samples_per_second=measured["samples_per_second"],
        samples_per_second_per_rank=measured["samples_per_second_per_rank"],
        mean_data_s=measured["mean_data_s"], mean_forward_backward_s=measured["mean_forward_backward_s"],
        mean_optimizer_s=measured["mean_optimizer_s"], mean_allreduce_s=measured["mean_allreduce_s"],
        mean_step_s=measured["mean_step_s"], peak_memory_bytes=end.peak_memory,
        epoch_time_s=measured["epoch_time_s"], final_val_accuracy=history[-1].val_accuracy,
        final_val_loss=history[-1].val_loss, test_accuracy=test["accuracy"],
        test_balanced_accuracy=test["balanced_accuracy"], test_macro_f1=test["macro_f1"], test_eer=test["eer"],
        test_loss=test["loss"], test_confusion=test["confusion"], test_per_class=test["per_class"],
        resumed_from=facts.resumed_from, rank_max_param_difference=end.divergence, restarts=end.restarts,
        train_wall_s=end.wall_s, labels=labels, history=history,
        device_reason=end.device_reason, backend=config.backend,
        synthetic_samples_per_second=end.synthetic.samples_per_second if end.synthetic else None,
        synthetic_step_s=end.synthetic.step_s if end.synthetic else None,
        **{**describe_environment(device, config.threads_per_rank, world), "launcher": env.launcher},
        code=code_version())


def ranks_in_sync(model: torch.nn.Module, backend: Backend) -> float:
    """Largest difference between any rank's parameters and rank 0's: DDP promises exactly 0.

    Buffers (BatchNorm running statistics) are left out: each rank updates them from its own batches, and DDP
    overwrites them with rank 0's at the start of every forward pass.
    """
    worst = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
    for tensor in model.parameters():
        reference = tensor.detach().clone()
        backend.broadcast(reference, src=0)
        worst = torch.maximum(worst, (tensor.detach().double() - reference.double()).abs().max())
    backend.all_reduce(worst, op="max")
    return float(worst.item())
