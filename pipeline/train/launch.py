"""The training stage: one job per run of the sweep (world sizes x batch sizes x repeats, see `pipeline.sweep`),
launched with torchrun on this machine or with srun (one task per rank) inside a SLURM allocation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from pipeline import fingerprint
from pipeline.config import ExperimentConfig
from pipeline.layout import RunLayout, TrainingPaths
from pipeline.records import Interrupted, Skipped
from pipeline.sweep import TrainingRun, plan
from pipeline.train.backend import backend_for
from pipeline.train.environment import available_cores
from pipeline.train.interrupt import TrainingInterrupted
from pipeline.train.reuse import check_reuse, features_digest, run_fingerprint


def pick_device(requested: str, world_size: int) -> str:
    """Where a run of `world_size` ranks trains on this machine: `train.device`, with `auto` meaning cuda when there
    is a GPU per rank."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested == "cuda" and gpus < world_size:
        raise RuntimeError(f"train.device: cuda asked for {world_size} GPUs, this machine has {gpus}")
    if requested == "auto":
        return "cuda" if gpus >= world_size else "cpu"
    return requested


def train_all(config: ExperimentConfig, config_path: Path, force: bool = False, only: str | None = None,
              launcher: str = "torchrun") -> list[Path]:
    """Run each configuration (or just `only`) that has no metrics.json yet, resuming from its checkpoint if it has
    one; returns their folders. `force` retrains from scratch. With `launcher="srun"` the ranks are the tasks of
    the SLURM allocation this runs in, which SLURM sized, so the core check is skipped."""
    layout = RunLayout(config.run_dir)
    if not layout.features.index.is_file():
        raise FileNotFoundError(f"{layout.features.index}: no features yet; run `pipeline preprocess CONFIG` first")
    backend_for(config.train.backend)
    runs = [TrainingRun.parse(only, config)] if only else plan(config, pick_device)
    features_sha256 = features_digest(config)
    folders = []
    for run in runs:
        paths = layout.training(run.name)
        folders.append(paths.folder)
        wanted = run_fingerprint(config, run, features_sha256)
        if not force:
            check_reuse(paths, wanted)
        if paths.metrics.exists() and not force:
            print(f"train: {run.name} already has {paths.metrics.name}, skipped (use --force to retrain)", flush=True)
            continue
        reason = oversubscribed(run, config, launcher)
        if reason:
            print(f"train: {run.name} skipped: {reason}", flush=True)
            Skipped(run.world_size, run.device, run.batch_size, reason).write(paths.skipped)
            continue
        paths.skipped.unlink(missing_ok=True)
        if force:
            shutil.rmtree(paths.checkpoints, ignore_errors=True)
            paths.metrics.unlink(missing_ok=True)
        fingerprint.record(paths.fingerprint, wanted)
        launch(run, config, config_path, paths.folder, launcher)
    return folders


def oversubscribed(run: TrainingRun, config: ExperimentConfig, launcher: str) -> str | None:
    """Why a CPU run launched here by torchrun should be skipped (train.skip_oversubscribed), or None."""
    needed = run.world_size * config.train.threads_per_rank
    cores = available_cores()
    if run.device == "cpu" and needed > cores and config.train.skip_oversubscribed and launcher == "torchrun":
        return f"needs {needed} cores ({run.world_size} ranks x {config.train.threads_per_rank} threads), " \
               f"the machine gives {cores}"
    return None


def launch_command(run: TrainingRun, config_path: Path, out: Path, launcher: str, restarts: int = 0) -> list[str]:
    """The command that starts the ranks of `run`; `restarts` is how often the run was started before (recorded in
    its metrics)."""
    worker = ["-m", "pipeline.train.worker", "--config", str(config_path), "--out", str(out), "--device", run.device,
              "--batch-size", str(run.batch_size), "--resume"]
    if run.repeat:
        worker += ["--repeat", str(run.repeat)]
    if restarts:
        worker += ["--restarts", str(restarts)]
    if launcher == "srun":
        # One task per rank across the allocation's nodes; if one task fails, SLURM ends the others.
        return ["srun", f"--ntasks={run.world_size}", "--kill-on-bad-exit=1", sys.executable, *worker]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={run.world_size}", *worker]
    raise ValueError(f"--launcher {launcher!r}: expected torchrun or srun")


def launch(run: TrainingRun, config: ExperimentConfig, config_path: Path, out: Path, launcher: str) -> None:
    """Launch one configuration; if a rank dies, launch it again and let it resume from the last checkpoint.

    Restarts are done here rather than by torchrun's --max-restarts, which reuses its rendezvous store: in torch 2.11
    a restarted gloo group can read the dead rank's old address from it and fail to connect (pytorch#167288).
    A job that SLURM requeued counts its earlier runs as restarts too.
    """
    paths = TrainingPaths(out)
    out.mkdir(parents=True, exist_ok=True)
    requeues = int(os.environ.get("SLURM_RESTART_COUNT", 0))
    command = launch_command(run, config_path, out, launcher, requeues)
    shown = [Path(part).name if part == sys.executable else part for part in command]  # no machine paths in logs
    print(f"train: {run.name}: {' '.join(shown)}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(config.train.threads_per_rank)}
    attempts = config.train.max_restarts + 1
    for attempt in range(attempts):
        command = launch_command(run, config_path, out, launcher, requeues + attempt)
        with open(paths.log, "a") as log:
            log.write(f"--- {run.name}, attempt {attempt + 1} of {attempts}"
                      + (f" (SLURM start {requeues + 1})" if requeues else "") + "\n")
            log.flush()
            result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
        _raise_if_interrupted(run, paths)
        if result.returncode == 0 and paths.metrics.exists():
            return
        if attempt < config.train.max_restarts:
            print(f"train: {run.name} failed (exit {result.returncode}); restarting from its last checkpoint",
                  flush=True)
    tail = paths.log.read_text()[-3000:]
    raise RuntimeError(f"train: {run.name} failed (exit {result.returncode}); log {paths.log}:\n{tail}")


def _raise_if_interrupted(run: TrainingRun, paths: TrainingPaths) -> None:
    """A signal stopped the run after its checkpoint: say so (the CLI exits with its own code), do not restart."""
    if not paths.interrupted.exists() or paths.metrics.exists():
        return
    facts = Interrupted.read(paths.interrupted)
    raise TrainingInterrupted(
        f"train: {run.name} stopped by {facts.signal} in epoch {facts.epoch} after {facts.batches_done} batches; "
        f"checkpoint {paths.checkpoint}. Run the same command again to resume.")
