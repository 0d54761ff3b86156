"""One rank of one training configuration: `python -m pipeline.train.worker`, under torchrun, horovodrun or srun.

Rank 0 writes the configuration's outputs: metrics.json, steps.csv, the test confusion matrix, model.pt (the
final weights, for `pipeline evaluate` and `pipeline predict`) and TensorBoard logs. A run stopped by a signal
writes only its checkpoint; the next run with --resume continues from it.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config import ExperimentConfig, load_config
from pipeline.layout import RunLayout, TrainingPaths
from pipeline.records import Interrupted
from pipeline.sweep import BACKENDS, repeat_seed
from pipeline.train import distributed
from pipeline.train.backend import Backend, backend_for
from pipeline.train.preemption import StopFlag, requeue_slurm_job
from pipeline.train.results import finish
from pipeline.train.trainer import Outcome, Trainer


@dataclass
class Rank:
    """This process in the job: its place, its device, the backend it joined the group with."""

    env: distributed.DistributedEnv
    device: torch.device
    backend: Backend


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="resolved experiment YAML")
    parser.add_argument("--out", required=True, help="folder of this configuration")
    parser.add_argument("--device", choices=["cpu", "cuda"], required=True)
    parser.add_argument("--batch-size", type=int, help="batch size per rank (default: train.batch_size)")
    parser.add_argument("--backend", choices=list(BACKENDS), help="the run's backend (default: train.backend)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt if present")
    parser.add_argument("--repeat", type=int, default=0,
                        help="repeat k of train.repeats, trained with seed train.seed + k - 1 (0: no repeats)")
    parser.add_argument("--restarts", type=int, default=0,
                        help="times the launcher (or SLURM's requeue) started this run before; recorded in metrics")
    parser.add_argument("--device-reason", help="why the launcher gave this run its device; recorded in metrics")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    stop = StopFlag()
    stop.install()  # before anything slow, so an early signal is not fatal
    experiment = load_config(args.config)
    stop.use_config(experiment.slurm.signal)
    if args.batch_size:
        experiment.train.batch_size = args.batch_size
    if args.backend:
        experiment.train.backend = args.backend
    experiment.train.seed = repeat_seed(experiment.train.seed, args.repeat)
    rank = join(experiment, args.device)
    paths = TrainingPaths(Path(args.out))
    started = time.perf_counter()
    if rank.env.rank == 0:
        # Every rank installed its signal handlers before joining the group, so from here a signal is safe.
        print(f"rank 0 (pid {os.getpid()}): {rank.env.world_size} ranks joined via {rank.env.launcher}", flush=True)
        paths.interrupted.unlink(missing_ok=True)
    failing = True
    try:
        # The trainer (and its DDP wrapper) lives only inside `run`, so it is garbage by the time of teardown.
        run(experiment, args, paths, rank, stop, started)
        failing = False
    finally:
        if failing:  # say who failed now: the launcher ends the other ranks as soon as this one exits
            print(f"rank {rank.env.rank} (pid {os.getpid()}) failed; leaving the group without waiting for the "
                  "others", flush=True)
        rank.backend.teardown(failing=failing)


def join(experiment: ExperimentConfig, device_type: str) -> Rank:
    """Pick the backend, find this rank's place in the job, and join the process group on its device."""
    config = experiment.train
    backend = backend_for(config.backend)
    env = distributed.from_environment()
    if device_type == "cuda":
        device = torch.device("cuda", distributed.device_index(env.local_rank, env.local_world_size,
                                                                 torch.cuda.device_count()))
    else:
        torch.set_num_threads(config.threads_per_rank)
        device = torch.device("cpu")
    backend.setup(env, device, timeout_s=config.collective_timeout_s)
    return Rank(env, device, backend)


def run(experiment: ExperimentConfig, args: argparse.Namespace, paths: TrainingPaths, rank: Rank, stop: StopFlag,
        started: float) -> None:
    """Train; then either record the interruption or evaluate the test split and write the outputs."""
    config = experiment.train
    tensorboard = _tensorboard(paths) if rank.env.rank == 0 else None
    log = print if rank.env.rank == 0 else (lambda *a, **k: None)
    trainer = Trainer.build(RunLayout(experiment.run_dir), paths, config, rank.device, rank.backend, stop,
                            args.resume, log=lambda text: log(text, flush=True), tensorboard=tensorboard)
    outcome = trainer.fit()
    if outcome.stop_signal is not None:
        if rank.env.rank == 0:
            requeue = config.requeue and stop.requeues(outcome.stop_signal)
            _record_interruption(paths, outcome, experiment.slurm.requeue_by if requeue else None)
        return
    finish(experiment, trainer, outcome, paths, rank.env, repeat=args.repeat, restarts=args.restarts,
           device_reason=args.device_reason, wall_s=time.perf_counter() - started)
    if tensorboard is not None:
        tensorboard.close()


def _record_interruption(paths: TrainingPaths, outcome: Outcome, requeue_by: str | None) -> None:
    """Say why there are no metrics (the launcher reports it), and requeue the SLURM job on the requeue signal:
    `requeue_by` is `rank` (here, with scontrol), `script` (the batch script does) or None (nobody)."""
    note = None
    if requeue_by == "rank":
        note = requeue_slurm_job()
    elif requeue_by == "script" and os.environ.get("SLURM_JOB_ID"):
        note = "left to the batch script (slurm.requeue_by: script), which requeues on exit 75"
    if note:
        print(note, flush=True)
    progress = outcome.progress
    Interrupted(signal=signal.Signals(outcome.stop_signal).name, epoch=progress.epoch,
                batches_done=progress.batches_done, optimizer_steps=progress.optimizer_steps,
                checkpoint=paths.checkpoint.relative_to(paths.folder.parent).as_posix(),
                requeue=note).write(paths.interrupted)


def _tensorboard(paths: TrainingPaths):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(paths.tensorboard))


if __name__ == "__main__":
    main()
