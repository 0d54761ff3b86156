"""The training stage: one job per configuration of the sweep (world sizes x batch sizes x repeats), launched with
torchrun on this machine or with srun (one task per rank) inside a SLURM allocation."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline import fingerprint
from pipeline.config import ExperimentConfig, to_dict
from pipeline.fingerprint import FILE_NAME as FINGERPRINT
from pipeline.io import atomic_write_json
from pipeline.train.distributed import require_backend
from pipeline.train.environment import available_cores
from pipeline.train.interrupt import TrainingInterrupted

RESTARTS_VARIABLE = "PIPELINE_RESTARTS"
"""How many times the launcher restarted this configuration; recorded in metrics.json."""


REPEAT_SUFFIX = re.compile(r"-r(\d+)$")
"""How a repeat's name ends: `ws2-cpu-bs32-r2` is repeat 2 of configuration `ws2-cpu-bs32`."""


def split_repeat(name: str) -> tuple[str, int]:
    """(configuration, k) of a run's name; k is 0 for a name without a repeat suffix."""
    match = REPEAT_SUFFIX.search(name)
    return (name[:match.start()], int(match[1])) if match else (name, 0)


@dataclass(frozen=True)
class TrainingRun:
    world_size: int
    device: str
    batch_size: int
    repeat: int = 0
    """k >= 1: repeat k of train.repeats, in its own folder; 0: the only run of its configuration (train.repeats 1),
    whose name has no suffix, so runs made before repeats existed keep their folders."""

    @property
    def configuration(self) -> str:
        """The name shared by all repeats: what the report aggregates over."""
        return f"ws{self.world_size}-{self.device}-bs{self.batch_size}"

    @property
    def name(self) -> str:
        return f"{self.configuration}-r{self.repeat}" if self.repeat else self.configuration

    @classmethod
    def parse(cls, name: str, config: ExperimentConfig) -> TrainingRun:
        """The run a name stands for; it must be one that `plan` makes for the config."""
        match = re.fullmatch(r"ws(\d+)-(cpu|cuda)-bs(\d+)(?:-r(\d+))?", name)
        if not match:
            raise ValueError(f"--configuration {name!r}: expected a name like ws2-cuda-bs32 (or ws2-cuda-bs32-r1 "
                             "with train.repeats above 1)")
        run = cls(int(match[1]), match[2], int(match[3]), int(match[4] or 0))
        if run.world_size not in config.train.world_sizes:
            raise ValueError(f"--configuration {name!r}: world size {run.world_size} is not in train.world_sizes "
                             f"{config.train.world_sizes}")
        if run.batch_size not in batch_sizes(config):
            raise ValueError(f"--configuration {name!r}: batch size {run.batch_size} is not in the sweep "
                             f"{batch_sizes(config)} (train.batch_sizes, or train.batch_size)")
        repeats = config.train.repeats
        if repeats == 1 and match[4] is not None:
            raise ValueError(f"--configuration {name!r}: train.repeats is 1, so names have no -r<k> suffix; "
                             f"use {run.configuration}")
        if repeats > 1 and not 1 <= run.repeat <= repeats:
            raise ValueError(f"--configuration {name!r}: train.repeats is {repeats}, so name one repeat from "
                             f"{run.configuration}-r1 to {run.configuration}-r{repeats}")
        return run


def repeat_seed(seed: int, repeat: int) -> int:
    """train.seed of repeat k (seed + k - 1; repeat 0, the only run, keeps the seed): model initialisation and
    data order differ between repeats."""
    return seed + max(repeat, 1) - 1


def batch_sizes(config: ExperimentConfig) -> list[int]:
    return config.train.batch_sizes or [config.train.batch_size]


def pick_device(requested: str, world_size: int) -> str:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested == "cuda" and gpus < world_size:
        raise RuntimeError(f"train.device: cuda asked for {world_size} GPUs, this machine has {gpus}")
    if requested == "auto":
        return "cuda" if gpus >= world_size else "cpu"
    return requested


def plan(config: ExperimentConfig, device_for=pick_device) -> list[TrainingRun]:
    """Every run of the sweep, the repeats of a configuration next to each other; `device_for(train.device,
    world_size)` decides where each runs. With train.repeats 1 there is one run per configuration, without suffix."""
    repeats = range(1, config.train.repeats + 1) if config.train.repeats > 1 else [0]
    return [TrainingRun(n, device_for(config.train.device, n), b, k)
            for n in config.train.world_sizes for b in batch_sizes(config) for k in repeats]


SWEEP_ONLY = {"world_sizes", "batch_sizes", "batch_size", "repeats", "device", "skip_oversubscribed", "max_restarts",
              "requeue"}
"""TrainConfig keys that shape the sweep or its scheduling, not one run (whose own values replace them)."""


def features_digest(config: ExperimentConfig) -> str:
    """Digest of the features' fingerprint: what identifies the features every run of the sweep reads."""
    features = Path(config.run_dir) / "features" / FINGERPRINT
    if not features.is_file():
        raise FileNotFoundError(f"{features}: the features carry no fingerprint (made by an older version of the "
                                "pipeline); preprocess them again into a new run_dir")
    return fingerprint.file_digest(features)


def run_fingerprint(config: ExperimentConfig, run: TrainingRun, features_sha256: str) -> dict:
    """What one run's outputs depend on: its training settings, the features it reads (`features_digest`), the
    code."""
    settings = {k: v for k, v in to_dict(config.train).items() if k not in SWEEP_ONLY}
    settings.update(world_size=run.world_size, device=run.device, batch_size=run.batch_size, repeat=run.repeat,
                    seed=repeat_seed(config.train.seed, run.repeat))
    return {"settings": settings, "features_sha256": features_sha256, "code": fingerprint.code_version()}


def check_reuse(out: Path, wanted: dict) -> None:
    """Refuse to skip or resume a run whose metrics or checkpoint were made otherwise than `wanted` says."""
    made = [name for name in ("metrics.json", "checkpoints/last.pt") if (out / name).exists()]
    if not made:
        return
    start_over = "retrain it with --force, or choose a new run_dir"
    if not (out / FINGERPRINT).is_file():
        raise fingerprint.StaleOutputs(f"{out}: {' and '.join(made)} carry no fingerprint (made by an older version "
                                       f"of the pipeline); {start_over}")
    fingerprint.check_or_record(out / FINGERPRINT, wanted, f"outputs of {out.name}", start_over)


def train_all(config: ExperimentConfig, config_path: Path, force: bool = False, only: str | None = None,
              launcher: str = "torchrun") -> list[Path]:
    """Run each configuration (or just `only`) that has no metrics.json yet, resuming from its checkpoint if it has
    one; returns their folders. `force` retrains from scratch. With `launcher="srun"` the ranks are the tasks of
    the SLURM allocation this runs in, which SLURM sized, so the core check is skipped."""
    index = Path(config.run_dir) / "features" / "index.csv"
    if not index.is_file():
        raise FileNotFoundError(f"{index}: no features yet; run `pipeline preprocess CONFIG` first")
    require_backend(config.train.backend)
    runs = [TrainingRun.parse(only, config)] if only else plan(config)
    features_sha256 = features_digest(config)
    folders = []
    for run in runs:
        out = Path(config.run_dir) / "configs" / run.name
        folders.append(out)
        wanted = run_fingerprint(config, run, features_sha256)
        if not force:
            check_reuse(out, wanted)
        if (out / "metrics.json").exists() and not force:
            print(f"train: {run.name} already has metrics.json, skipped (use --force to retrain)", flush=True)
            continue
        needed = run.world_size * config.train.threads_per_rank
        cores = available_cores()
        if run.device == "cpu" and needed > cores and config.train.skip_oversubscribed and launcher == "torchrun":
            reason = f"needs {needed} cores ({run.world_size} ranks x {config.train.threads_per_rank} threads), " \
                     f"the machine gives {cores}"
            print(f"train: {run.name} skipped: {reason}", flush=True)
            atomic_write_json(out / "skipped.json", {"world_size": run.world_size, "device": run.device,
                                                     "batch_size_per_rank": run.batch_size, "reason": reason})
            continue
        (out / "skipped.json").unlink(missing_ok=True)
        if force:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
            (out / "metrics.json").unlink(missing_ok=True)
        fingerprint.record(out / FINGERPRINT, wanted)
        launch(run, config, config_path, out, launcher)
    return folders


def launch_command(run: TrainingRun, config_path: Path, out: Path, launcher: str) -> list[str]:
    worker = ["-m", "pipeline.train.worker", "--config", str(config_path), "--out", str(out), "--device", run.device,
              "--batch-size", str(run.batch_size), "--resume"]
    if run.repeat:
        worker += ["--repeat", str(run.repeat)]
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
    out.mkdir(parents=True, exist_ok=True)
    command = launch_command(run, config_path, out, launcher)
    shown = [Path(part).name if part == sys.executable else part for part in command]  # no machine paths in logs
    print(f"train: {run.name}: {' '.join(shown)}", flush=True)
    requeues = int(os.environ.get("SLURM_RESTART_COUNT", 0))
    for attempt in range(config.train.max_restarts + 1):
        env = {**os.environ, "OMP_NUM_THREADS": str(config.train.threads_per_rank),
               RESTARTS_VARIABLE: str(requeues + attempt)}
        with open(out / "train.log", "a") as log:
            log.write(f"--- {run.name}, attempt {attempt + 1} of {config.train.max_restarts + 1}"
                      + (f" (SLURM start {requeues + 1})" if requeues else "") + "\n")
            log.flush()
            result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
        interrupted = out / "interrupted.json"
        if interrupted.exists() and not (out / "metrics.json").exists():
            facts = json.loads(interrupted.read_text())
            raise TrainingInterrupted(
                f"train: {run.name} stopped by {facts['signal']} in epoch {facts['epoch']} after "
                f"{facts['batches_done']} batches; checkpoint {out / 'checkpoints' / 'last.pt'}. Run the same command "
                "again to resume.")
        if result.returncode == 0 and (out / "metrics.json").exists():
            return
        if attempt < config.train.max_restarts:
            print(f"train: {run.name} failed (exit {result.returncode}); restarting from its last checkpoint",
                  flush=True)
    tail = (out / "train.log").read_text()[-3000:]
    raise RuntimeError(f"train: {run.name} failed (exit {result.returncode}); log {out / 'train.log'}:\n{tail}")
