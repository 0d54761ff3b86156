"""The training stage: one torchrun job per configuration of the sweep (for now, one per world size)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config import ExperimentConfig
from pipeline.io import atomic_write_json
from pipeline.train.distributed import require_backend
from pipeline.train.environment import available_cores
from pipeline.train.interrupt import TrainingInterrupted

RESTARTS_VARIABLE = "PIPELINE_RESTARTS"
"""How many times the launcher restarted this configuration; recorded in metrics.json."""


@dataclass(frozen=True)
class TrainingRun:
    world_size: int
    device: str
    batch_size: int

    @property
    def name(self) -> str:
        return f"ws{self.world_size}-{self.device}-bs{self.batch_size}"


def pick_device(requested: str, world_size: int) -> str:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested == "cuda" and gpus < world_size:
        raise RuntimeError(f"train.device: cuda asked for {world_size} GPUs, this machine has {gpus}")
    if requested == "auto":
        return "cuda" if gpus >= world_size else "cpu"
    return requested


def plan(config: ExperimentConfig) -> list[TrainingRun]:
    train = config.train
    return [TrainingRun(n, pick_device(train.device, n), train.batch_size) for n in train.world_sizes]


def train_all(config: ExperimentConfig, config_path: Path, force: bool = False) -> list[Path]:
    """Run each configuration that has no metrics.json yet, resuming from its checkpoint if it has one; returns
    their folders. `force` retrains from scratch."""
    index = Path(config.run_dir) / "features" / "index.csv"
    if not index.is_file():
        raise FileNotFoundError(f"{index}: no features yet; run `pipeline preprocess CONFIG` first")
    require_backend(config.train.backend)
    folders = []
    for run in plan(config):
        out = Path(config.run_dir) / "configs" / run.name
        folders.append(out)
        if (out / "metrics.json").exists() and not force:
            print(f"train: {run.name} already has metrics.json, skipped (use --force to retrain)", flush=True)
            continue
        needed = run.world_size * config.train.threads_per_rank
        cores = available_cores()
        if run.device == "cpu" and needed > cores and config.train.skip_oversubscribed:
            reason = f"needs {needed} cores ({run.world_size} ranks x {config.train.threads_per_rank} threads), " \
                     f"the machine gives {cores}"
            print(f"train: {run.name} skipped: {reason}", flush=True)
            atomic_write_json(out / "skipped.json", {"world_size": run.world_size, "device": run.device,
                                                     "batch_size_per_rank": run.batch_size, "reason": reason})
            continue
        (out / "skipped.json").unlink(missing_ok=True)
        if force:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
        launch(run, config, config_path, out)
    return folders


def launch(run: TrainingRun, config: ExperimentConfig, config_path: Path, out: Path) -> None:
    """torchrun one configuration; if a rank dies, start a fresh torchrun that resumes from the last checkpoint.

    Restarts are done here rather than by torchrun's --max-restarts, which reuses its rendezvous store: in torch 2.11
    a restarted gloo group can read the dead rank's old address from it and fail to connect (pytorch#167288).
    """
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={run.world_size}",
               "-m", "pipeline.train.worker", "--config", str(config_path), "--out", str(out),
               "--device", run.device, "--resume"]
    print(f"train: {run.name}: {' '.join(command)}", flush=True)
    for attempt in range(config.train.max_restarts + 1):
        env = {**os.environ, "OMP_NUM_THREADS": str(config.train.threads_per_rank), RESTARTS_VARIABLE: str(attempt)}
        with open(out / "train.log", "a") as log:
            log.write(f"--- {run.name}, attempt {attempt + 1} of {config.train.max_restarts + 1}\n")
            log.flush()
            result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
        interrupted = out / "interrupted.json"
        if interrupted.exists() and not (out / "metrics.json").exists():
            facts = json.loads(interrupted.read_text())
            raise TrainingInterrupted(
                f"train: {run.name} stopped by {facts['signal']} in epoch {facts['epoch']} after "
                f"{facts['batches_done']} batches; checkpoint {facts['checkpoint']}. Run the same command again "
                "to resume.")
        if result.returncode == 0 and (out / "metrics.json").exists():
            return
        if attempt < config.train.max_restarts:
            print(f"train: {run.name} failed (exit {result.returncode}); restarting from its last checkpoint",
                  flush=True)
    tail = (out / "train.log").read_text()[-3000:]
    raise RuntimeError(f"train: {run.name} failed (exit {result.returncode}); log {out / 'train.log'}:\n{tail}")
