"""Where the Dask workers come from (`preprocess.cluster`): its config keys, the worker lifetime under a walltime,
dask-mpi under mpirun, and the progress display. The SLURM jobs of `cluster: slurm` and the MPI batch script are
tested on the local SLURM cluster in tests/slurm/test_dask_clusters.py."""

from __future__ import annotations

import importlib.util
import io
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.preprocess import node_workers, security
from pipeline.preprocess.cluster import jobqueue_gpu_options, slurm_cluster_options, worker_lifetime
from pipeline.preprocess.gpus import WorkerPlan
from pipeline.preprocess.progress import Progress
from tests.conftest import tiny_experiment
from tests.preprocess.compare import assert_same_outputs, prepared, serial_run

MPIRUN = Path(sys.executable).parent / "mpirun"
HAS_MPI = all(importlib.util.find_spec(m) for m in ("mpi4py", "dask_mpi")) and MPIRUN.is_file()
MPI_ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "DASK_LOGGING__DISTRIBUTED": "warning"}
"""Open MPI refuses to run as root without these (the tests and the local cluster's jobs run as root)."""


@pytest.mark.parametrize(("keys", "message"), [
    ({"cluster": "kubernetes"}, "'preprocess.cluster' must be one of 'local', 'slurm', 'mpi'"),
    ({"slurm_cluster": {"processes": 8, "cores": 4}}, "'preprocess.slurm_cluster.processes' has an impossible"),
    ({"slurm_cluster": {"jobs": 0}}, "'preprocess.slurm_cluster.jobs' has an impossible value 0"),
    ({"slurm_cluster": {"gpus_per_job": 2, "processes": 2}}, "'preprocess.slurm_cluster.gpus_per_job' has an impos"),
    ({"slurm_cluster": {"gpus_per_job": -1}}, "'preprocess.slurm_cluster.gpus_per_job' has an impossible value -1"),
    ({"slurm_cluster": {"walltime": "00:01:00"}}, "'preprocess.slurm_cluster.walltime' has an impossible"),
    ({"slurm_cluster": {"walltime": "1 hour"}}, "'preprocess.slurm_cluster.walltime' has an impossible"),
    ({"slurm_cluster": {"memory": "8GB\n#SBATCH --uid=0"}}, "'preprocess.slurm_cluster.memory' is not a valid"),
    ({"slurm_cluster": {"partition": "gpu; rm -rf ~"}}, "'preprocess.slurm_cluster.partition' is not a valid"),
    ({"slurm_cluster": {"extra_options": ["--qos=high", "-x"]}}, r"'preprocess.slurm_cluster.extra_options\[1\]'"),
    ({"interface": "lo --preload evil"}, "'preprocess.interface' is not a valid value"),
])
def test_cluster_keys_are_checked_naming_key_and_value(tmp_path, speech_dir, keys, message):
    with pytest.raises(ConfigError, match=message):
        load_config(tiny_experiment(tmp_path, speech_dir, preprocess=keys))


def test_cluster_keys_load_with_their_types(tmp_path, speech_dir):
    config = load_config(tiny_experiment(tmp_path, speech_dir, preprocess={
        "cluster": "slurm", "interface": "ib0", "slurm_cluster": {"jobs": 3, "memory": "16GiB",
                                                                  "walltime": "1-00:00:00"}}))
    assert config.preprocess.cluster == "slurm" and config.preprocess.slurm_cluster.jobs == 3
    assert config.preprocess.slurm_cluster.cores == 4  # the default of a key not given
    assert load_config(tiny_experiment(tmp_path, speech_dir)).preprocess.cluster == "local"


def test_gpu_worker_jobs_ask_for_their_gpus_and_run_the_node_launcher(tmp_path, speech_dir):
    """`slurm_cluster.gpus_per_job`: the job script dask-jobqueue writes asks for the GPUs and runs the per-node
    launcher, whose own parser reads that very command line and names the workers as dask-jobqueue expects; every
    worker it starts gets the run's TLS options, and the cluster's scheduler listens with TLS."""
    from dask_jobqueue import SLURMCluster

    keys = {"cluster": "slurm", "interface": "lo",
            "slurm_cluster": {"gpus_per_job": 2, "processes": 3, "cores": 3, "walltime": "00:10:00"}}
    config = load_config(tiny_experiment(tmp_path, speech_dir, preprocess=keys)).preprocess
    base = {"job_extra_directives": ["--qos=high"], "worker_extra_args": ["--lifetime", "510s"]}
    options = jobqueue_gpu_options(config, base)
    assert options == {"job_extra_directives": ["--qos=high", "--gres=gpu:2"],
                       "worker_command": "pipeline.preprocess.node_workers",
                       "worker_extra_args": ["--lifetime", "510s", "--nworkers", "3", "--device", "auto"]}
    credentials = security.make(tmp_path / "slurm" / "dask-tls-1")
    with SLURMCluster(**slurm_cluster_options(config, tmp_path / "slurm" / "logs", credentials)) as cluster:
        script = cluster.job_script()
        assert cluster.scheduler_address.startswith("tls://")
    assert "#SBATCH --gres=gpu:2\n" in script
    command = shlex.split(script.strip().splitlines()[-1])
    assert command[:3] == [sys.executable, "-m", "pipeline.preprocess.node_workers"]
    assert command[3].startswith("tls://")
    args, forward = node_workers.parse(command[3:])
    assert (args.nworkers, args.device) == (3, "auto") and "--memory-limit" in forward and "--interface" in forward
    tls = ["--protocol", "tls://", *credentials.dask_options()]
    assert " ".join(tls) in " ".join(forward), forward
    assert "--dashboard-address 127.0.0.1:0" in " ".join(forward)  # the workers' HTTP servers: localhost only
    plan = WorkerPlan(("0", "1"), 1)
    commands = node_workers.worker_commands(plan, forward, 1, args.name)
    names = [c.argv[c.argv.index("--name") + 1] for c in commands]
    assert names == [f"{args.name}-{i}" for i in range(3)]  # the group dask-jobqueue made of a 3-process job
    assert all(" ".join(tls) in " ".join(c.argv) for c in commands)  # every worker speaks TLS with the run's keys

    assert jobqueue_gpu_options(load_config(tiny_experiment(tmp_path, speech_dir)).preprocess, base) == {}
    config.device = "cpu"  # features on the CPU: no GPUs asked for
    assert jobqueue_gpu_options(config, base) == {}
    config.device = "auto"
    config.slurm_cluster.gpus_per_job = 3
    with pytest.raises(ValueError, match="processes must be at least gpus_per_job \\+ 1"):
        jobqueue_gpu_options(config, base)


@pytest.mark.parametrize("walltime", [120, 600, 3600, 4 * 3600, 7 * 24 * 3600])
def test_workers_retire_before_the_walltime_with_time_to_spare(walltime):
    lifetime, stagger = worker_lifetime(walltime)
    latest = lifetime + stagger
    assert lifetime - stagger > 0 and latest < walltime
    assert walltime - latest >= min(60, walltime // 10)  # time for the retiring worker to hand its tasks back


def test_a_walltime_too_short_for_any_work_is_an_error():
    with pytest.raises(ValueError, match="preprocess.slurm_cluster.walltime"):
        worker_lifetime(60)


def test_cluster_mpi_outside_an_mpi_launch_says_what_is_missing(tmp_path, speech_dir):
    config_path, _ = prepared(tmp_path, speech_dir)
    result = subprocess.run([sys.executable, "-m", "pipeline", "preprocess", str(config_path), "--set",
                             "preprocess.cluster=mpi"], capture_output=True, text=True, timeout=120, env=MPI_ENV,
                            check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    if HAS_MPI:  # a singleton MPI process: one rank
        assert "needs at least 3 MPI ranks (scheduler, client, one worker), got 1" in result.stderr
    else:
        assert "needs mpi4py, an MPI library and dask-mpi" in result.stderr
        assert "pip install -e '.[mpi]'" in result.stderr


@pytest.mark.skipif(not HAS_MPI, reason="the mpi extra is not installed (pip install -e '.[mpi]')")
def test_dask_mpi_under_mpirun_gives_the_same_outputs_as_serial(tmp_path, speech_dir):
    reference = serial_run(tmp_path / "serial", speech_dir)
    config_path, config = prepared(tmp_path / "mpi", speech_dir)
    # 4 ranks: the scheduler, this pipeline, 2 workers; oversubscribed, as the machine may have fewer cores.
    result = subprocess.run([str(MPIRUN), "-n", "4", "--oversubscribe", "--bind-to", "none", sys.executable, "-m",
                             "pipeline", "preprocess", str(config_path), "--set", "preprocess.cluster=mpi",
                             "--set", "preprocess.interface=lo"],
                            capture_output=True, text=True, timeout=300, env=MPI_ENV, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "dask: MPI, 2 worker ranks" in result.stdout
    assert "scheduler at tls://" in result.stdout  # credentials from rank 0 over MPI, in every rank's config
    assert_same_outputs(reference, Path(config.run_dir))


@pytest.mark.skipif(not HAS_MPI, reason="the mpi extra is not installed (pip install -e '.[mpi]')")
def test_dask_mpi_ranks_of_a_node_with_gpus_get_one_pinned_worker_per_gpu(tmp_path, speech_dir):
    """5 ranks on a node whose CUDA_VISIBLE_DEVICES is "0,1" (fake: the features run on the CPU): of the 3 worker
    ranks, 2 are feature workers, one per GPU, and 1 decodes; the run splits its tasks and matches a serial one."""
    reference = serial_run(tmp_path / "serial", speech_dir)
    config_path, config = prepared(tmp_path / "mpi", speech_dir)
    result = subprocess.run([str(MPIRUN), "-n", "5", "--oversubscribe", "--bind-to", "none", "-x",
                             "CUDA_VISIBLE_DEVICES", sys.executable, "-m", "pipeline", "preprocess", str(config_path),
                             "--set", "preprocess.cluster=mpi", "--set", "preprocess.interface=lo"],
                            capture_output=True, text=True, timeout=300, check=False,
                            env={**MPI_ENV, "CUDA_VISIBLE_DEVICES": "0,1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "dask: MPI, 3 worker ranks: 3 workers (2 GPU workers for features and images, 1 CPU workers for " \
           "decoding)" in result.stdout
    assert_same_outputs(reference, Path(config.run_dir))


def test_progress_in_a_log_is_one_line_per_tenth_with_rate_and_eta():
    log = io.StringIO()
    progress = Progress(20, skipped=4, stream=log)
    for _ in range(16):
        progress.update(chunks=3)
    lines = log.getvalue().splitlines()
    assert len(lines) == 8  # a line at each tenth (every 2 tasks) from task 6 to 20
    assert "\r" not in log.getvalue()
    assert lines[-1].startswith("preprocess: 20/20 tasks, 4 already complete, 48 chunks, ")
    assert "tasks/s" in lines[-1] and "chunks/s" in lines[-1] and "ETA 0:00:00" in lines[-1]


def test_progress_on_a_terminal_is_one_bar_redrawn_in_place():
    main, replica = os.openpty()
    try:
        with os.fdopen(replica, "w") as terminal:
            progress = Progress(4, stream=terminal)
            progress.update(chunks=5)
            progress.update(chunks=5)
            progress.close()  # an interrupted run ends its line
        shown = _read_all(main)
    finally:
        os.close(main)
    assert shown.startswith("\rpreprocess: [")
    assert shown.count("\r") >= 2 and "\x1b[K" in shown
    assert "2/4 tasks, 10 chunks" in shown and "ETA " in shown and "#" * 10 + "." * 10 in shown
    assert shown.endswith("\n")



def _read_all(terminal: int) -> str:
    """What was written to the other side of a pseudo-terminal, now closed (Linux answers EIO once it is read)."""
    out = b""
    while True:
        try:
            data = os.read(terminal, 65536)
        except OSError:
            break
        if not data:
            break
        out += data
    return out.decode()
