"""The training stage: one job per run of the sweep (backends x world sizes x batch sizes x repeats, see
`pipeline.sweep`), launched on this machine with torchrun (DDP) or horovodrun (Horovod), or with srun (one task per
rank) inside a SLURM allocation.

This process owns each configuration's folder while it trains it: it holds the folder's `train.lock`
(`pipeline.run_lock`) from before its first write (fingerprint, `--force`'s deletions) until no rank of it runs any
more, across restarts. It is one process per configuration whatever starts the ranks (torchrun here; srun in a
batch job, a submitit job or by hand), so the ranks need no lock of their own, and a refused second
`pipeline train` starts no rank at all.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from pipeline import fingerprint
from pipeline.config import ExperimentConfig
from pipeline.layout import RunLayout, TrainingPaths
from pipeline.records import Interrupted, Skipped
from pipeline.run_lock import RunLock, lock_path
from pipeline.sweep import TrainingRun, backends, plan
from pipeline.train import distributed
from pipeline.train.backend import backend_for
from pipeline.train.environment import available_cores, visible_gpus
from pipeline.train.horovod_launch import horovodrun_command, srun_rendezvous
from pipeline.train.interrupt import TrainingInterrupted
from pipeline.train.reuse import check_reuse, features_digest, run_fingerprint


def pick_device(requested: str, world_size: int, gpus: int | None = None) -> str:
    """Where a run of `world_size` ranks trains on a machine with `gpus` GPUs (default: those this process sees):
    `train.device`, with `auto` meaning cuda when there is a GPU per rank."""
    return device_choice(requested, world_size, gpus)[0]


def device_choice(requested: str, world_size: int, gpus: int | None = None) -> tuple[str, str]:
    """(device, why) of a run of `world_size` ranks planned on a machine with `gpus` GPUs (default: counted here)."""
    gpus = visible_gpus() if gpus is None else gpus
    here = f"this machine has {gpus}"
    if requested == "cuda":
        if gpus < world_size:
            raise RuntimeError(f"train.device: cuda asked for {world_size} GPUs, {here}")
        return "cuda", f"train.device cuda, {_ranks(world_size)} on {world_size} of the {gpus} GPU(s) here"
    if requested == "auto":
        if gpus >= world_size:
            return "cuda", f"train.device auto and a GPU per rank ({_ranks(world_size)}, {here})"
        return "cpu", f"train.device auto and {_ranks(world_size)} need {world_size} GPUs, {here}"
    return requested, f"train.device {requested}"


def _ranks(n: int) -> str:
    return f"{n} rank" if n == 1 else f"{n} ranks"


def named_run(name: str, config: ExperimentConfig, launcher: str, gpus: int | None = None,
              environ: dict[str, str] | None = None) -> tuple[TrainingRun, str]:
    """(run, why it has its device) of `--configuration name`. The name fixes the device, so a cuda run is checked
    here: under torchrun against this machine's GPUs (`gpus`, default: counted), under srun against the GPUs SLURM
    gave each node of the job (when it says). NCCL refuses two ranks on one GPU, so a run with fewer GPUs than
    ranks is refused up front rather than crashing in rank 1."""
    run = TrainingRun.parse(name, config)
    why = f"--configuration {name} names {run.device}"
    if run.device != "cuda":
        return run, why
    if launcher == "srun":
        return run, _srun_gpu_check(run, os.environ if environ is None else environ) or why
    gpus = visible_gpus() if gpus is None else gpus
    if gpus < run.world_size:
        fewer = f"name a configuration of at most {_ranks(gpus)}, " if gpus else ""
        raise ValueError(
            f"--configuration {name}: {run.world_size} cuda ranks need {run.world_size} GPUs, this machine has "
            f"{gpus} (NCCL refuses ranks sharing a GPU). Either {fewer}run it with `--launcher srun` inside a "
            f"SLURM allocation with a GPU per rank, or train on the CPU: --configuration {_on_cpu(run)}")
    return run, f"{why}; {_ranks(run.world_size)} on {run.world_size} of the {gpus} GPU(s) here"


def _on_cpu(run: TrainingRun) -> str:
    return TrainingRun(run.world_size, "cpu", run.batch_size, run.repeat, run.backend).name


def _srun_gpu_check(run: TrainingRun, environ: dict[str, str]) -> str | None:
    """Inside an allocation SLURM owns the GPUs: refuse a cuda run only when SLURM says (SLURM_GPUS_ON_NODE) that
    a node has fewer GPUs than the ranks srun puts on it; otherwise None (nothing to check against)."""
    on_node = environ.get("SLURM_GPUS_ON_NODE", "").strip()
    if not on_node.isdigit():
        return None
    nodes = int(environ.get("SLURM_JOB_NUM_NODES") or environ.get("SLURM_NNODES") or 1)
    per_node = int(environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0] or -(-run.world_size // nodes))
    if int(on_node) < per_node:
        raise ValueError(
            f"--configuration {run.name}: {per_node} cuda ranks per node need {per_node} GPUs per node, the SLURM "
            f"allocation gives {on_node} (SLURM_GPUS_ON_NODE; NCCL refuses ranks sharing a GPU). Submit it with a GPU "
            f"per rank (slurm.gpus_per_node), or train on the CPU: --configuration {_on_cpu(run)}")
    return (f"--configuration {run.name} names cuda; {per_node} rank(s) per node on the {on_node} GPU(s) per node "
            "of the SLURM allocation")


def planned_runs(config: ExperimentConfig, only: str | None, launcher: str) -> list[tuple[TrainingRun, str]]:
    """The runs to train, each with why it got its device: `only`, or the sweep on this machine's GPUs."""
    if only:
        return [named_run(only, config, launcher)]
    gpus = visible_gpus()
    reasons: dict[tuple[str, int], str] = {}

    def device_for(requested: str, world_size: int) -> str:
        device, reasons[requested, world_size] = device_choice(requested, world_size, gpus)
        return device

    runs = plan(config, device_for)
    return [(run, reasons[config.train.device, run.world_size]) for run in runs]


def train_all(config: ExperimentConfig, config_path: Path, force: bool = False, only: str | None = None,
              launcher: str = "torchrun") -> list[Path]:
    """Run each configuration (or just `only`) that has no metrics.json yet, resuming from its checkpoint if it has
    one; returns their folders. `force` retrains from scratch. With `launcher="srun"` the ranks are the tasks of
    the SLURM allocation this runs in, which SLURM sized, so the core check is skipped. What was asked for is
    checked (names, GPUs per rank) before anything else, the features are needed only then. Each configuration is
    trained holding its folder's lock: one another process holds is refused (`RunLockHeld`), naming the holder."""
    layout = RunLayout(config.run_dir)
    for backend in backends(config.train):
        backend_for(backend)
    runs = planned_runs(config, only, launcher)
    if not layout.features.index.is_file():
        raise FileNotFoundError(f"{layout.features.index}: no features yet; run `pipeline preprocess CONFIG` first")
    features_sha256 = features_digest(config)
    folders = []
    for run, why in runs:
        paths = layout.training(run.name)
        folders.append(paths.folder)
        with RunLock(lock_path(paths.folder, "train"), "train", run.name):
            train_one(run, why, config, config_path, paths, features_sha256, force, launcher)
    return folders


def train_one(run: TrainingRun, why: str, config: ExperimentConfig, config_path: Path, paths: TrainingPaths,
              features_sha256: str, force: bool, launcher: str) -> None:
    """One configuration of `train_all`: skip it (done, or too big for this machine) or launch it; the caller
    holds its lock."""
    wanted = run_fingerprint(config, run, features_sha256)
    if not force:
        check_reuse(paths, wanted)
    if paths.metrics.exists() and not force:
        print(f"train: {run.name} already has {paths.metrics.name}, skipped (use --force to retrain)", flush=True)
        return
    reason = oversubscribed(run, config, launcher)
    if reason:
        print(f"train: {run.name} skipped: {reason}", flush=True)
        Skipped(run.world_size, run.device, run.batch_size, reason).write(paths.skipped)
        return
    paths.skipped.unlink(missing_ok=True)
    if force:
        shutil.rmtree(paths.checkpoints, ignore_errors=True)
        paths.metrics.unlink(missing_ok=True)
    fingerprint.record(paths.fingerprint, wanted)
    print(f"train: {run.name} runs on {run.device}: {why}", flush=True)
    launch(run, config, config_path, paths.folder, launcher, device_reason=why)


def oversubscribed(run: TrainingRun, config: ExperimentConfig, launcher: str) -> str | None:
    """Why a CPU run launched here by torchrun should be skipped (train.skip_oversubscribed), or None."""
    needed = run.world_size * config.train.threads_per_rank
    cores = available_cores()
    if run.device == "cpu" and needed > cores and config.train.skip_oversubscribed and launcher == "torchrun":
        return f"needs {needed} cores ({run.world_size} ranks x {config.train.threads_per_rank} threads), " \
               f"the machine gives {cores}"
    return None


def launch_command(run: TrainingRun, config_path: Path, out: Path, launcher: str, restarts: int = 0,
                   device_reason: str | None = None) -> list[str]:
    """The command that starts the ranks of `run`; `restarts` is how often the run was started before and
    `device_reason` why it got its device (both recorded in its metrics). `launcher` torchrun means this machine:
    torchrun for DDP, horovodrun for Horovod."""
    worker = ["-m", "pipeline.train.worker", "--config", str(config_path), "--out", str(out), "--device", run.device,
              "--batch-size", str(run.batch_size), "--backend", run.backend, "--resume"]
    if run.repeat:
        worker += ["--repeat", str(run.repeat)]
    if restarts:
        worker += ["--restarts", str(restarts)]
    if device_reason:
        worker += ["--device-reason", device_reason]
    if launcher == "srun":
        # One task per rank across the allocation's nodes; if one task fails, SLURM ends the others.
        # Since Slurm 22.05 srun no longer inherits the job's --cpus-per-task: pass it, or ranks get one CPU each.
        cpus = [f"--cpus-per-task={os.environ['SLURM_CPUS_PER_TASK']}"] if os.environ.get("SLURM_CPUS_PER_TASK") else []
        if run.backend == "horovod":  # the ranks of a node consecutive, as the rendezvous plan has them
            nodes = _srun_nodes()
            cpus += [f"--nodes={nodes}", f"--ntasks-per-node={run.world_size // nodes}"]
        return ["srun", f"--ntasks={run.world_size}", *cpus, "--kill-on-bad-exit=1", sys.executable, *worker]
    if launcher == "torchrun" and run.backend == "horovod":
        return horovodrun_command(run.world_size, worker)
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={run.world_size}", *worker]
    raise ValueError(f"--launcher {launcher!r}: expected torchrun or srun")


def launch(run: TrainingRun, config: ExperimentConfig, config_path: Path, out: Path, launcher: str,
           device_reason: str | None = None) -> None:
    """Launch one configuration; if a rank dies, launch it again and let it resume from the last checkpoint.
    `device_reason` (why the run got its device) reaches the ranks' metrics as a worker argument.

    Restarts are done here rather than by torchrun's --max-restarts, which reuses its rendezvous store: in torch 2.11
    a restarted gloo group can read the dead rank's old address from it and fail to connect (pytorch#167288).
    A job that SLURM requeued counts its earlier runs as restarts too.
    """
    paths = TrainingPaths(out)
    out.mkdir(parents=True, exist_ok=True)
    requeues = int(os.environ.get("SLURM_RESTART_COUNT", 0))
    command = launch_command(run, config_path, out, launcher, requeues, device_reason)
    shown = [Path(part).name if part == sys.executable else part for part in command]  # no machine paths in logs
    print(f"train: {run.name}: {' '.join(shown)}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(config.train.threads_per_rank)}
    attempts = config.train.max_restarts + 1
    for attempt in range(attempts):
        command = launch_command(run, config_path, out, launcher, requeues + attempt, device_reason)
        with open(paths.log, "a") as log:
            log.write(f"--- {run.name}, attempt {attempt + 1} of {attempts}"
                      + (f" (SLURM start {requeues + 1})" if requeues else "") + "\n")
            log.flush()
            with _rendezvous(run, launcher) as rendezvous:
                returncode = run_ranks(command, {**env, **rendezvous}, log)
        _raise_if_interrupted(run, paths)
        if returncode == 0 and paths.metrics.exists():
            return
        if attempt < config.train.max_restarts:
            print(f"train: {run.name} failed (exit {returncode}); restarting from its last checkpoint",
                  flush=True)
    text = paths.log.read_text()
    why = distributed.failure_summary(text)  # the failed ranks and their errors, which torchrun's summary omits
    raise RuntimeError(f"train: {run.name} failed (exit {returncode}); log {paths.log}:\n"
                       + (f"{why}\n--- log tail:\n" if why else "") + text[-3000:])


def _srun_nodes() -> int:
    return int(os.environ.get("SLURM_JOB_NUM_NODES") or os.environ.get("SLURM_NNODES") or 1)


@contextmanager
def _rendezvous(run: TrainingRun, launcher: str) -> Iterator[dict[str, str]]:
    """The variables the ranks of one attempt need beyond the launcher's: Horovod's gloo rendezvous under srun
    (horovodrun, torchrun and srun for DDP bring their own)."""
    if run.backend != "horovod" or launcher != "srun":
        yield {}
        return
    with srun_rendezvous(run.world_size, _srun_nodes()) as variables:
        yield variables


def run_ranks(command: list[str], env: dict[str, str], log: IO) -> int:
    """Run the ranks' launcher (torchrun or srun) to its end; its exit status.

    A SIGTERM to this process (`kill`, or scancel reaching the batch step) is passed on to it, and this process goes
    on waiting: the ranks checkpoint and stop (torchrun and srun hand the signal to them), and the configuration's
    lock, which this process holds, is released only once no rank writes any more. On any other exception the
    launcher is killed, as `subprocess.run` does."""
    child = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    with _passing_on(signal.SIGTERM, child):
        try:
            return child.wait()
        except BaseException:
            child.kill()
            child.wait()
            raise


@contextmanager
def _passing_on(signum: int, child: subprocess.Popen) -> Iterator[None]:
    """While the block runs, send `signum` on to `child` instead of dying of it (main thread only: elsewhere
    Python cannot install a handler, and the signal keeps its effect)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signum, lambda received, frame: child.send_signal(received))
    try:
        yield
    finally:
        signal.signal(signum, previous)


def _raise_if_interrupted(run: TrainingRun, paths: TrainingPaths) -> None:
    """A signal stopped the run after its checkpoint: say so (the CLI exits with its own code), do not restart."""
    if not paths.interrupted.exists() or paths.metrics.exists():
        return
    facts = Interrupted.read(paths.interrupted)
    raise TrainingInterrupted(
        f"train: {run.name} stopped by {facts.signal} in epoch {facts.epoch} after {facts.batches_done} batches; "
        f"checkpoint {paths.checkpoint}. Run the same command again to resume.")
