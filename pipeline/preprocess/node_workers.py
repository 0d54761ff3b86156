"""The Dask workers of one node, one feature worker per GPU: what `srun` starts once per node in
slurm/preprocess.sbatch, and what each worker job of `preprocess.cluster: slurm` with `slurm_cluster.gpus_per_job`
runs in place of `dask worker`.

SLURM runs one task per node, and `dask worker --nworkers N` starts N alike processes, which with features on GPUs
would all open their CUDA context on the node's first GPU. This launcher runs on the node itself, reads the node's
GPUs (`gpus.node_gpus`: its CUDA_VISIBLE_DEVICES) and starts, as `gpus.plan_workers` says:

- one `dask worker --nworkers 1 --resources GPU=1` per GPU, with CUDA_VISIBLE_DEVICES set to that GPU alone;
- the other workers (N - G, at least one) with CUDA_VISIBLE_DEVICES="" and `--resources DECODE=1`;

then waits for them, handing SIGTERM/SIGINT on (scancel, the batch script's exit trap). Without a GPU, or with
`--device cpu`, it becomes (exec) the plain `dask worker --nworkers N` of before, so nothing changes there.

    python -m pipeline.preprocess.node_workers --scheduler-file F --nworkers 8 --nthreads 1 --device auto \
        --tls-ca-file D/ca.pem --tls-cert D/cluster.pem --tls-key D/cluster-key.pem

Every other argument (the scheduler address or file, --memory-limit, --lifetime, --interface, ...) goes to each
`dask worker` as given, the TLS options (`--tls-ca-file`, `--tls-cert`, `--tls-key`, `--protocol tls://`: the
run's credentials, `preprocess.security`) included: every worker and nanny then both connects and listens with
TLS, so none of them can be reached without the run's key. With `--name NAME`, as dask-jobqueue passes it, the
workers are NAME-0 .. NAME-(N-1): the names dask-jobqueue expects of a job of N processes.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from pipeline.preprocess.gpus import DECODE, GPU, WorkerPlan, node_gpus, plan_workers

DASK_WORKER = ("-m", "distributed.cli.dask_worker")


@dataclass(frozen=True)
class Command:
    """One `dask worker` command and the CUDA_VISIBLE_DEVICES it runs with (None: this process's own)."""

    argv: list[str]
    cuda_visible_devices: str | None


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The launcher's own options, and the rest, for `dask worker`. No abbreviations: `--na` is not `--name`."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.preprocess.node_workers", allow_abbrev=False,
                                     description="Start this node's Dask workers, one per GPU plus CPU workers.")
    parser.add_argument("--nworkers", type=int, default=1, help="workers on this node (with G GPUs: G + at least 1)")
    parser.add_argument("--nthreads", type=int, default=1, help="threads per worker")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="preprocess.device: cpu starts the plain workers, without GPU workers")
    parser.add_argument("--name", help="worker name prefix (dask-jobqueue's): workers NAME-0 .. NAME-(N-1)")
    args, forward = parser.parse_known_args(argv)
    if args.nworkers < 1 or args.nthreads < 1:
        parser.error("--nworkers and --nthreads must be at least 1")
    return args, forward


def worker_commands(plan: WorkerPlan, forward: list[str], nthreads: int, name: str | None) -> list[Command]:
    """The `dask worker` commands of `plan`. Unnamed CPU workers share one command (one process less per worker);
    named ones get one each, so that every name is NAME-<i>."""
    base = [sys.executable, *DASK_WORKER, *forward, "--nthreads", str(nthreads)]
    if not plan.uses_gpus:
        return [Command([*base, "--nworkers", str(plan.cpu_workers), *(["--name", name] if name else [])], None)]

    def named(i: int) -> list[str]:
        return ["--name", f"{name}-{i}"] if name else []

    commands = [Command([*base, "--nworkers", "1", "--resources", f"{GPU}=1", *named(i)], device)
                for i, device in enumerate(plan.gpu_devices)]
    decode = [*base, "--resources", f"{DECODE}=1"]
    if name:
        first = len(plan.gpu_devices)
        return commands + [Command([*decode, "--nworkers", "1", *named(first + j)], "")
                           for j in range(plan.cpu_workers)]
    return commands + [Command([*decode, "--nworkers", str(plan.cpu_workers)], "")]


def describe(plan: WorkerPlan, device: str) -> str:
    host = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    if not plan.uses_gpus:
        why = "device cpu" if device == "cpu" else "no GPU in CUDA_VISIBLE_DEVICES"
        return f"node_workers: {host}: {plan.cpu_workers} Dask workers ({why})"
    return (f"node_workers: {host}: {len(plan.gpu_devices)} GPU workers (CUDA_VISIBLE_DEVICES "
            f"{', '.join(plan.gpu_devices)}) for features and images, {plan.cpu_workers} CPU workers for decoding")


def run_all(commands: list[Command]) -> int:
    """Start every command and wait for all of them. SIGTERM/SIGINT/SIGHUP go on to each; when one exits with an
    error the others are stopped too, so a node never runs on with half its workers. Returns the first error."""
    processes: list[subprocess.Popen] = []

    def stop(signum: int, frame: object = None) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    for command in commands:
        env = dict(os.environ)
        if command.cuda_visible_devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = command.cuda_visible_devices
        processes.append(subprocess.Popen(command.argv, env=env))
    failed = 0
    while any(process.poll() is None for process in processes):
        code = next((p.returncode for p in processes if p.returncode not in (None, 0)), 0)
        if code and not failed:
            failed = code
            stop(signal.SIGTERM)
        time.sleep(0.5)
    return failed or next((p.returncode for p in processes if p.returncode), 0)


def main(argv: list[str] | None = None) -> int:
    args, forward = parse(argv)
    plan = plan_workers(args.nworkers, args.device, node_gpus(os.environ, args.device))
    commands = worker_commands(plan, forward, args.nthreads, args.name)
    print(describe(plan, args.device), flush=True)
    if plan.uses_gpus:
        return run_all(commands)
    os.execv(sys.executable, commands[0].argv)  # the one `dask worker` of before, in this process: srun signals it
    return 0  # not reached: execv returns only by raising


if __name__ == "__main__":
    sys.exit(main())
