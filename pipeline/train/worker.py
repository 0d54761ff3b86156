"""One DDP rank of one training configuration: `python -m pipeline.train.worker`, under torchrun or srun.

Rank 0 writes the configuration's outputs: metrics.json, steps.csv, the test confusion matrix, model.pt (the
final weights, for `pipeline evaluate` and `pipeline predict`) and TensorBoard logs. A run stopped by a signal
writes only its checkpoint; the next run with --resume continues from it.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist

from pipeline.config import ExperimentConfig, load_config, to_dict
from pipeline.fingerprint import code_version
from pipeline.io import atomic_write, atomic_write_json
from pipeline.train import distributed
from pipeline.train.data import build_dataset, read_labels
from pipeline.train.environment import describe_environment
from pipeline.train.evaluation import evaluate
from pipeline.train.launch import RESTARTS_VARIABLE, repeat_seed
from pipeline.train.metrics import write_confusion
from pipeline.train.preemption import StopFlag, requeue_slurm_job
from pipeline.train.timing import PHASES, StepTimes, peak_memory_bytes, write_step_times
from pipeline.train.trainer import Outcome, train

INTERRUPTED = "interrupted.json"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="resolved experiment YAML")
    parser.add_argument("--out", required=True, help="folder of this configuration")
    parser.add_argument("--device", choices=["cpu", "cuda"], required=True)
    parser.add_argument("--batch-size", type=int, help="batch size per rank (default: train.batch_size)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt if present")
    parser.add_argument("--repeat", type=int, default=0,
                        help="repeat k of train.repeats, trained with seed train.seed + k - 1 (0: no repeats)")
    args = parser.parse_args(argv)
    stop = StopFlag()
    stop.install()  # before anything slow, so an early signal is not fatal
    experiment = load_config(args.config)
    if args.batch_size:
        experiment.train.batch_size = args.batch_size
    experiment.train.seed = repeat_seed(experiment.train.seed, args.repeat)
    config = experiment.train
    distributed.require_backend(config.backend)
    env = distributed.from_environment()
    distributed.export_rendezvous(env)
    if args.device == "cuda":
        torch.cuda.set_device(env.local_rank)
        device = torch.device("cuda", env.local_rank)
    else:
        torch.set_num_threads(config.threads_per_rank)
        device = torch.device("cpu")
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    out = Path(args.out)
    started = time.perf_counter()
    if env.rank == 0:
        # Every rank installed its signal handlers before joining the group, so from here a signal is safe.
        print(f"rank 0 (pid {os.getpid()}): {env.world_size} ranks joined via {env.launcher}", flush=True)
        (out / INTERRUPTED).unlink(missing_ok=True)
    try:
        tensorboard = _tensorboard(out) if env.rank == 0 else None
        log = print if env.rank == 0 else (lambda *a, **k: None)
        outcome = train(Path(experiment.run_dir), out, config, device, args.resume, stop,
                        log=lambda text: log(text, flush=True), tensorboard=tensorboard)
        if outcome.stop_signal is not None:
            if env.rank == 0:
                _record_interruption(out, outcome, config.requeue)
            return
        _finish(experiment, args.repeat, outcome, out, device, env, time.perf_counter() - started)
        if tensorboard is not None:
            tensorboard.close()
    finally:
        # DDP's reducer keeps the process group alive through reference cycles. If it survives until interpreter
        # shutdown, a gloo thread can reach for the GIL mid-finalisation and abort the rank ("terminate called
        # without an active exception"), so it is collected and the group destroyed while Python is fully alive.
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
        gc.collect()


def _finish(experiment: ExperimentConfig, repeat: int, outcome: Outcome, out: Path, device: torch.device,
            env: distributed.DistributedEnv, wall_s: float) -> None:
    """Test-set evaluation on all ranks; rank 0 writes the outputs."""
    config, progress = experiment.train, outcome.progress
    run_dir = Path(experiment.run_dir)
    labels = read_labels(run_dir)
    test_set, _ = build_dataset(run_dir, config.input, config.feature, "test")
    test = evaluate(outcome.model, test_set, labels, device, config.batch_size, config.loader_workers,
                    outcome.details["channels_last"], outcome.details["precision"] == "bf16")
    divergence = _ranks_in_sync(outcome.model)
    peak = torch.tensor(peak_memory_bytes(device), dtype=torch.float64, device=device)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    if env.rank != 0:
        return
    history = progress.history
    steady = history[1:] or history  # the first epoch pays one-off costs (allocator, caches)
    steady = [h for h in steady if not h["resumed_mid_epoch"]] or steady
    steady_epochs = {h["epoch"] for h in steady}
    samples_per_second = sum(h["samples"] for h in steady) / sum(h["epoch_time_s"] for h in steady)
    world = env.world_size
    write_step_times(out / "steps.csv", progress.step_times)
    write_confusion(out / "confusion_test", test["confusion"], labels, f"test, {out.name}")
    model_state = {"model": outcome.model.state_dict(), "labels": labels, "train": to_dict(config),
                   "in_channels": outcome.details["in_channels"], "n_bins": outcome.details["n_bins"]}
    atomic_write(out / "model.pt", lambda tmp: torch.save(model_state, tmp))
    steps = StepTimes(progress.step_times)
    steps_mean = {f"mean_{phase}": steps.mean(phase, steady_epochs) for phase in PHASES}
    # What DDP all-reduces per optimizer step: one gradient per trainable parameter (the report's projection model).
    trainable = [p for p in outcome.model.parameters() if p.requires_grad]
    metrics = {
        "world_size": world, "nodes": env.nodes, "device": device.type, "precision": outcome.details["precision"],
        "model": config.model, "input": config.input, "feature": config.feature, "init": outcome.details["init"],
        "batch_size_per_rank": config.batch_size, "grad_accumulation": config.grad_accumulation,
        "global_batch_size": config.batch_size * world * config.grad_accumulation,
        "epochs": config.epochs, "epochs_run": len(history), "stopped_early": progress.stopped_early,
        "lr": config.lr, "lr_effective": outcome.details["lr_effective"],
        "warmup_steps": outcome.details["warmup_steps"], "train_samples": outcome.details["train_samples"],
        "steps_per_epoch": outcome.details["steps_per_epoch"], "repeat": repeat, "seed": config.seed,
        "parameters": sum(p.numel() for p in trainable),
        "gradient_bytes": sum(p.numel() * p.element_size() for p in trainable),
        "samples_per_second": samples_per_second, "samples_per_second_per_rank": samples_per_second / world,
        **steps_mean, "peak_memory_bytes": int(peak.item()),
        "epoch_time_s": sum(h["epoch_time_s"] for h in steady) / len(steady),
        "final_val_accuracy": history[-1]["val_accuracy"], "final_val_loss": history[-1]["val_loss"],
        "test_accuracy": test["accuracy"], "test_balanced_accuracy": test["balanced_accuracy"],
        "test_macro_f1": test["macro_f1"], "test_eer": test["eer"], "test_loss": test["loss"],
        "test_confusion": test["confusion"], "test_per_class": test["per_class"],
        "resumed_from": outcome.details["resumed_from"], "rank_max_param_difference": divergence,
        "restarts": int(os.environ.get(RESTARTS_VARIABLE, 0)),
        "train_wall_s": wall_s, "labels": labels, "history": history,
    }
    metrics.update(describe_environment(device, config.threads_per_rank, world))
    metrics["launcher"] = env.launcher
    metrics["code"] = code_version()
    atomic_write_json(out / "metrics.json", metrics)


def _record_interruption(out: Path, outcome: Outcome, requeue: bool) -> None:
    """Say why there are no metrics (the launcher reports it), and requeue the SLURM job on SIGUSR1."""
    note = None
    if outcome.stop_signal == StopFlag.REQUEUE_SIGNAL and requeue:
        note = requeue_slurm_job()
        if note:
            print(note, flush=True)
    progress = outcome.progress
    atomic_write_json(out / INTERRUPTED, {
        "signal": signal.Signals(outcome.stop_signal).name, "epoch": progress.epoch,
        "batches_done": progress.batches_done, "optimizer_steps": progress.optimizer_steps,
        "checkpoint": f"{out.name}/checkpoints/last.pt", "requeue": note})


def _ranks_in_sync(model: torch.nn.Module) -> float:
    """Largest difference between any rank's parameters and rank 0's: DDP promises exactly 0.

    Buffers (BatchNorm running statistics) are left out: each rank updates them from its own batches, and DDP
    overwrites them with rank 0's at the start of every forward pass.
    """
    worst = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
    for tensor in model.parameters():
        reference = tensor.detach().clone()
        dist.broadcast(reference, src=0)
        worst = torch.maximum(worst, (tensor.detach().double() - reference.double()).abs().max())
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst.item())


def _tensorboard(out: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(out / "tensorboard"))


if __name__ == "__main__":
    main()
