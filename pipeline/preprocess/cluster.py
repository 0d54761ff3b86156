"""Where the Dask workers of the preprocessing come from (`preprocess.cluster`), behind one executor interface.

- `local`: a LocalCluster of worker processes on this machine;
- `slurm`: dask-jobqueue's SLURMCluster, which submits SLURM jobs that each run worker processes and connect back
  to a scheduler in this process;
- `mpi`: dask-mpi inside one MPI launch (slurm/preprocess-mpi.sbatch): rank 0 runs the scheduler, rank 1 this
  pipeline, every other rank a worker;
- `scheduler_file` (wins over `cluster`): attach to a running cluster, as slurm/preprocess.sbatch starts one.

Whatever the source, the stage gets a concurrent.futures Executor whose failed tasks are retried, so a worker that
dies (killed, out of memory, a node lost) costs a redo of its tasks, not the run. With features on GPUs every source
has one feature worker per GPU (`preprocess.gpus`): the LocalCluster's own worker specs, the per-node launcher
`preprocess.node_workers` for the sbatch script's and dask-jobqueue's workers, `gpus.rank_role` for dask-mpi's
ranks; where the workers report the GPU and DECODE resources, the executor is `gpus.SplitExecutor`.

Every source speaks TLS with credentials made for the run (`preprocess.security`), and a worker runs any code a
connected client sends it: without TLS any user who can reach a node could run code as the run's owner. A
LocalCluster keeps them in memory; the SLURMCluster writes them beside its logs for its worker jobs, dask-mpi hands
them over MPI, and an attached client reads them beside the scheduler file. Dashboards listen on localhost only; the
printed line says how to tunnel to one (`ssh -L`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from pathlib import Path

from pipeline.config import PreprocessConfig, slurm_time_seconds
from pipeline.preprocess import security

CONNECT_TIMEOUT_S = 300
"""How long to wait for a scheduler file and its workers: workers on other nodes can take a while to start."""
RETRIES = 2
"""Extra attempts of a task that raised; tasks lost with a dying worker are rescheduled by Dask itself."""
JOB_NAME = "preprocess-dask"
"""Job name of the worker jobs of `cluster: slurm` (what squeue shows)."""
DASHBOARD = "127.0.0.1:0"
"""The dashboard's address, localhost only: it shows the tasks and its Bokeh server takes no credentials. The
workers' own HTTP servers (metrics, a worker's dashboard) listen there too."""


@contextlib.contextmanager
def dask_executor(config: PreprocessConfig, log_dir: Path | None = None) -> Iterator[Executor]:
    """Dask as a concurrent.futures executor, from the cluster `config` asks for.

    `log_dir` is where the worker jobs of `cluster: slurm` write their logs (else the current directory).
    """
    if config.scheduler_file:
        source = _attached(config)
    elif config.cluster == "slurm":
        source = _slurm(config, log_dir)
    elif config.cluster == "mpi":
        source = _mpi(config)
    else:
        source = _local(config)
    with source as executor:
        yield executor


@contextlib.contextmanager
def _local(config: PreprocessConfig) -> Iterator[Executor]:
    """`config.workers` single-threaded worker processes: each task already keeps its core busy (decode, FFT, PNG
    encoding), and processes rather than threads because much of that work holds the GIL."""
    from dask.distributed import Client, LocalCluster

    from pipeline.preprocess import gpus

    plan = gpus.local_plan(config.workers, config.device)
    if plan.uses_gpus:
        with _gpu_local(plan) as executor:
            yield executor
        return
    with LocalCluster(n_workers=config.workers, threads_per_worker=1, processes=True, dashboard_address=DASHBOARD,
                      preload=[__name__], protocol="tls", security=security.in_memory()) as cluster, \
            Client(cluster) as client:
        print(f"dask: {config.workers} workers (TLS), {dashboard(client)}", flush=True)
        yield client.get_executor(retries=RETRIES)


@contextlib.contextmanager
def _gpu_local(plan) -> Iterator[Executor]:
    """A LocalCluster with one feature worker per GPU, each pinned to its GPU, and CPU workers that decode
    (`preprocess.gpus`). A SpecCluster hands its `security` to none of its workers, so each spec gets it, and its
    scheduler and workers would listen on every interface: they listen on localhost, as a LocalCluster's do."""
    from dask.distributed import Client, Scheduler, SpecCluster

    from pipeline.preprocess import gpus

    tls = security.in_memory()
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": DASHBOARD, "protocol": "tls", "security": tls,
                                               "host": "127.0.0.1"}}
    workers = gpus.worker_specs(plan, [__name__])
    for spec in workers.values():
        spec["options"].update(security=tls, host="127.0.0.1")
    with SpecCluster(workers=workers, scheduler=scheduler, security=tls) as cluster, Client(cluster) as client:
        print(f"dask: {len(plan.gpu_devices)} GPU workers (CUDA_VISIBLE_DEVICES {', '.join(plan.gpu_devices)}) for "
              f"features and images, {plan.cpu_workers} CPU workers for decoding (TLS), {dashboard(client)}",
              flush=True)
        yield gpus.SplitExecutor(client, RETRIES)


def dask_setup(worker) -> None:
    """Preload of the LocalCluster's worker processes. Ctrl-C on a terminal signals its whole process group, workers
    included; they leave it to the pipeline process, which stops them as it exits, rather than each dying with a
    traceback of its own."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _attached(config: PreprocessConfig) -> Iterator[Executor]:
    """The cluster of a scheduler file, once `config.workers` workers are in; split decode/features when they
    include GPU workers (slurm/preprocess.sbatch on nodes with GPUs). Its TLS credentials are the folder beside the
    scheduler file (`security.folder_for`), which whoever started the scheduler made."""
    from dask.distributed import Client

    scheduler_file = _wait_for(Path(config.scheduler_file))
    credentials = security.load(security.folder_for(Path(scheduler_file)))
    with Client(scheduler_file=scheduler_file, security=credentials.security(), timeout=CONNECT_TIMEOUT_S) as client:
        client.wait_for_workers(config.workers, timeout=CONNECT_TIMEOUT_S)
        executor, workers = _executor_for(client)
        print(f"dask: attached to {client.scheduler.address} with {workers}, {dashboard(client)}", flush=True)
        yield executor


def _executor_for(client) -> tuple[Executor, str]:
    """The executor for the workers connected now, and what they are in words: `gpus.SplitExecutor` when some
    report the GPU resource and some DECODE (one feature worker per GPU), else Dask's own."""
    from pipeline.preprocess import gpus

    workers = client.scheduler_info()["workers"]
    if not gpus.splits_tasks(workers):
        return client.get_executor(retries=RETRIES), f"{len(workers)} workers"
    gpu, decode = gpus.resource_counts(workers)
    return gpus.SplitExecutor(client, RETRIES), (f"{len(workers)} workers ({gpu} GPU workers for features and "
                                                 f"images, {decode} CPU workers for decoding)")


@contextlib.contextmanager
def _slurm(config: PreprocessConfig, log_dir: Path | None) -> Iterator[Executor]:
    """SLURM jobs of workers, kept at `slurm_cluster.jobs` (adaptive with minimum = maximum, so a job whose workers
    retired before its walltime is replaced by a new one). The TLS credentials live beside the log folder for as
    long as the cluster does (they go after its jobs are cancelled)."""
    from dask_jobqueue import SLURMCluster

    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
    with security.run_credentials(jobqueue_credentials_folder(log_dir)) as credentials:
        options = slurm_cluster_options(config, log_dir, credentials)
        with SLURMCluster(**options) as cluster, \
                _run_slurm_cluster(cluster, config.slurm_cluster, "worker_command" in options) as executor:
            yield executor


def slurm_cluster_options(config: PreprocessConfig, log_dir: Path | None,
                          credentials: security.Credentials) -> dict:
    """dask-jobqueue's SLURMCluster keywords for `config`. With `security` (file paths, not in-memory keys) it gives
    its scheduler TLS and puts `--protocol tls:// --tls-ca-file .. --tls-cert .. --tls-key ..` into each job's
    `dask worker` (or `preprocess.node_workers`) command; the jobs, on other nodes, read the files through the
    shared file system."""
    jobs = config.slurm_cluster
    lifetime, stagger = worker_lifetime(slurm_time_seconds(jobs.walltime) or 0)
    options = {"job_extra_directives": list(jobs.extra_options),
               "worker_extra_args": ["--lifetime", f"{lifetime}s", "--lifetime-stagger", f"{stagger}s",
                                     "--dashboard-address", DASHBOARD]}
    options.update(jobqueue_gpu_options(config, options))
    return {"cores": jobs.cores, "processes": jobs.processes, "memory": jobs.memory, "walltime": jobs.walltime,
            "queue": jobs.partition, "account": jobs.account, "interface": config.interface, "job_name": JOB_NAME,
            "python": sys.executable, "log_directory": str(log_dir) if log_dir is not None else None,
            "scheduler_options": {"dashboard_address": DASHBOARD}, "protocol": "tls://",
            "security": credentials.security(), **options}


@contextlib.contextmanager
def _run_slurm_cluster(cluster, jobs, grouped: bool) -> Iterator[Executor]:
    """Start the worker jobs of `cluster`; the executor once a worker is in (with `grouped`, the job's workers start
    together, so also the rest of the first job's)."""
    from dask.distributed import Client

    script = "\n".join(f"dask:   | {line}" for line in cluster.job_script().splitlines())
    print(f"dask: SLURMCluster, {jobs.jobs} jobs x {jobs.processes} worker processes; each job runs this "
          f"script (sbatch):\n{script}", flush=True)
    cluster.adapt(minimum_jobs=jobs.jobs, maximum_jobs=jobs.jobs)
    with Client(cluster) as client:
        print(f"dask: scheduler at {cluster.scheduler_address} (TLS), {dashboard(client)}", flush=True)
        _wait_for_slurm_workers(client, cluster)
        if grouped:
            with contextlib.suppress(TimeoutError):
                client.wait_for_workers(jobs.processes, timeout=60)
        executor, workers = _executor_for(client)
        print(f"dask: {workers} connected so far", flush=True)
        yield executor


def jobqueue_credentials_folder(log_dir: Path | None) -> Path:
    """Where `cluster: slurm` keeps its TLS credentials: beside the log folder (`<run_dir>/slurm/`), else in the
    current directory, as the logs; on the shared file system either way, which the worker jobs read them from.
    Named after this host and process, so that two runs never share or overwrite each other's."""
    parent = Path(log_dir).parent if log_dir is not None else Path.cwd()
    return parent / f"dask-tls-jobqueue-{socket.gethostname()}-{os.getpid()}"


def dashboard(client) -> str:
    """Where the dashboard is, in words: it listens on localhost of the scheduler's node only, so from elsewhere it
    takes an ssh tunnel to that node."""
    port = client.scheduler_info(n_workers=0)["services"].get("dashboard")
    if port is None:
        return "no dashboard"
    node = client.run_on_scheduler(socket.gethostname)
    return (f"dashboard at http://localhost:{port}/status on {node} (localhost only; from another machine: "
            f"ssh -L {port}:localhost:{port} {node})")


def jobqueue_gpu_options(config: PreprocessConfig, options: dict[str, list[str]]) -> dict:
    """SLURMCluster options for `slurm_cluster.gpus_per_job` G > 0: the job asks for G GPUs (`--gres=gpu:G`) and
    runs the per-node launcher `preprocess.node_workers` instead of `dask worker`, which makes G of the job's
    `processes` workers feature workers, one per GPU, and the rest CPU workers that decode. dask-jobqueue starts a
    job's processes with one `dask worker --nworkers` command, all alike, so the launcher takes its place (its
    `worker_command`); it names the workers as dask-jobqueue expects. G = 0, or `device: cpu` (features stay on
    the CPU, so no GPU is asked for): no change."""
    jobs = config.slurm_cluster
    if not jobs.gpus_per_job or config.device == "cpu":
        return {}
    if not 0 < jobs.gpus_per_job < jobs.processes:
        raise ValueError(f"preprocess.slurm_cluster.gpus_per_job: {jobs.gpus_per_job} with processes "
                         f"{jobs.processes}; each GPU is one worker process and at least one more must decode, so "
                         "processes must be at least gpus_per_job + 1")
    return {"job_extra_directives": [*options["job_extra_directives"], f"--gres=gpu:{jobs.gpus_per_job}"],
            "worker_command": "pipeline.preprocess.node_workers",
            "worker_extra_args": [*options["worker_extra_args"], "--nworkers", str(jobs.processes),
                                  "--device", config.device]}


def worker_lifetime(walltime_s: int) -> tuple[int, int]:
    """(`--lifetime`, `--lifetime-stagger`) in seconds for workers of jobs limited to `walltime_s`.

    A worker past its lifetime retires gracefully (its tasks move elsewhere) and its job ends, so SLURM's walltime
    never kills a worker in the middle of a task; the stagger spreads the retirements so that not every job
    leaves at once. Worst case (lifetime + stagger) still leaves a tenth of the walltime, 1 to 10 minutes, to
    retire in.
    """
    stagger = min(max(walltime_s // 20, 10), 300)
    margin = min(max(walltime_s // 10, 60), 600)
    lifetime = walltime_s - margin - stagger
    if lifetime <= stagger:
        raise ValueError(f"preprocess.slurm_cluster.walltime: {walltime_s} s leaves no time for a worker to run "
                         "before it must retire; ask for at least 00:02:00")
    return lifetime, stagger


def _wait_for_slurm_workers(client, cluster) -> None:
    """Return once one worker has connected: tasks start as workers arrive. A job that could not be submitted is
    an error at once; jobs that pend in the queue are reported every minute (a busy cluster is no error)."""
    started = time.monotonic()
    last_report = started
    while not client.scheduler_info(n_workers=1)["workers"]:
        time.sleep(1)
        job_ids = [job.job_id for job in cluster.workers.values() if getattr(job, "job_id", None)]
        if not job_ids and time.monotonic() - started > 30:
            raise RuntimeError("preprocess.cluster: slurm: no worker job was submitted within 30 s; the sbatch "
                               "error is in the log above (check preprocess.slurm_cluster: partition, account, "
                               "memory, cores)")
        if time.monotonic() - last_report > 60:
            last_report = time.monotonic()
            states = subprocess.run(["squeue", "-h", "-o", "%i %T %r", "-j", ",".join(job_ids)],
                                    capture_output=True, text=True, check=False).stdout.strip()
            print(f"dask: waiting for the worker jobs ({time.monotonic() - started:.0f} s): "
                  f"{states.replace(chr(10), '; ') or 'not in squeue'}", flush=True)


@contextlib.contextmanager
def _mpi(config: PreprocessConfig) -> Iterator[Executor]:
    """dask-mpi in one MPI launch. Only rank 1 goes on to run the stage: ranks 0 (scheduler) and 2+ (workers)
    serve until rank 1 is done and then exit the process here, so every rank can run the same command. The TLS
    credentials come from rank 0 over MPI into Dask's configuration (`security.mpi_config`), which dask-mpi's
    scheduler, its workers and both clients read."""
    try:
        import dask_mpi
        from mpi4py import MPI
    except ImportError as err:
        raise RuntimeError(f"preprocess.cluster: mpi needs mpi4py, an MPI library and dask-mpi, which are not "
                           f"installed here ({err}); install the extra: pip install -e '.[mpi]'") from err
    import dask
    from dask.distributed import Client

    ranks = MPI.COMM_WORLD.Get_size()
    if ranks < 3:
        raise RuntimeError(f"preprocess.cluster: mpi needs at least 3 MPI ranks (scheduler, client, one worker), "
                           f"got {ranks}; start it with mpirun -n N or srun inside an allocation "
                           "(slurm/preprocess-mpi.sbatch)")
    with dask.config.set(security.mpi_config(MPI.COMM_WORLD)):
        is_client = dask_mpi.initialize(interface=config.interface, nthreads=1, dashboard_address=DASHBOARD,
                                        protocol="tls", exit=False,
                                        worker_options=_mpi_worker_options(MPI.COMM_WORLD, config.device))
        if not is_client:
            sys.exit(0)
        try:
            with Client() as client:
                client.wait_for_workers(ranks - 2, timeout=CONNECT_TIMEOUT_S)
                executor, workers = _executor_for(client)
                print(f"dask: MPI, {ranks - 2} worker ranks: {workers}, scheduler at {client.scheduler.address} "
                      f"(TLS), {dashboard(client)}", flush=True)
                yield executor
        finally:
            dask_mpi.send_close_signal()


def _mpi_worker_options(comm, device: str) -> dict:
    """This rank's Dask worker options under dask-mpi: the worker ranks of each node are split by `gpus.rank_role`
    into one feature worker per GPU of the node and CPU workers. Every rank calls this (splitting the communicator
    by node is collective); only worker ranks (2+) use it. dask-mpi runs the worker in this process, which has not
    initialised CUDA yet, so setting CUDA_VISIBLE_DEVICES here pins it. A worker's own HTTP server (its metrics)
    listens on localhost, as the dashboard does."""
    from mpi4py import MPI

    from pipeline.preprocess import gpus

    rank = comm.Get_rank()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        workers_here = sorted(r for r in node.allgather(rank) if r >= 2)
    finally:
        node.Free()
    if rank < 2:
        return {}
    visible, resources = gpus.rank_role(workers_here.index(rank), len(workers_here),
                                        gpus.node_gpus(os.environ, device))
    if visible is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    return {"dashboard_address": DASHBOARD, **({"resources": resources} if resources else {})}


def _wait_for(scheduler_file: Path) -> str:
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while not scheduler_file.is_file():
        if time.monotonic() > deadline:
            raise RuntimeError(f"preprocess.scheduler_file: {scheduler_file} did not appear within "
                               f"{CONNECT_TIMEOUT_S} s; is the Dask scheduler running?")
        time.sleep(0.5)
    return str(scheduler_file)
