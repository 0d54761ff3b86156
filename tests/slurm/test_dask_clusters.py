"""Dask workers from SLURM on the real local cluster: dask-jobqueue's worker jobs (`preprocess.cluster: slurm`),
dask-mpi in one batch job (slurm/preprocess-mpi.sbatch), and slurm/preprocess.sbatch, the last two also on nodes
with GPUs (the local cluster's fake ones: SLURM sets CUDA_VISIBLE_DEVICES, the features run on the CPU), where each
GPU gets its own pinned feature worker. All must give exactly the outputs of a serial run."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.slurm.jobs import FINISHED
from tests.preprocess.compare import assert_same_outputs, prepared, serial_run
from tests.preprocess.test_cluster import HAS_MPI, MPI_ENV
from tests.slurm.conftest import ROOT, wait_for

NODES = {"node1", "node2"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, speech_dir: Path) -> Path:
    return serial_run(tmp_path_factory.mktemp("serial"), speech_dir)


def preprocess_here(config_path: Path) -> subprocess.CompletedProcess:
    """`pipeline preprocess CONFIG` as a user runs it, which must succeed."""
    result = subprocess.run([sys.executable, "-m", "pipeline", "preprocess", str(config_path)], capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_slurm_cluster_of_two_worker_jobs_gives_the_same_outputs_as_serial(slurm_cluster, tmp_path, speech_dir,
                                                                           reference):
    config_path, config = prepared(tmp_path, speech_dir, cluster="slurm", interface="lo", workers=5, slurm_cluster={
        "jobs": 2, "cores": 1, "processes": 1, "memory": "1GB", "walltime": "00:10:00"})
    result = preprocess_here(config_path)
    # The job script is shown as submitted, workers retire before the walltime, and the dashboard is named.
    assert "dask:   | #SBATCH -t 00:10:00" in result.stdout
    assert "--lifetime 510s --lifetime-stagger 30s --dashboard-address 127.0.0.1:0 --interface lo" in result.stdout
    assert "dashboard at http://localhost:" in result.stdout and "ssh -L " in result.stdout
    run = Path(config.run_dir)
    # TLS: the scheduler's address, and every worker started with the run's credentials from beside the logs.
    assert "dask: scheduler at tls://" in result.stdout
    tls_prefix = run / "slurm" / f"dask-tls-jobqueue-{socket.gethostname()}-"
    assert f"--protocol tls:// --tls-ca-file {tls_prefix}" in result.stdout, result.stdout
    assert not list((run / "slurm").glob("dask-tls-*")), "the run's key folder was left behind"

    job_ids = {p.stem.rsplit("-", 1)[1] for p in (run / "slurm" / "logs").glob("preprocess-dask-*.err")}
    assert len(job_ids) == 2, job_ids
    summary = json.loads((run / "features" / "summary.json").read_text())
    assert set(summary["tasks_per_node"]) <= NODES, summary["tasks_per_node"]  # every task ran in a SLURM job
    assert 1 <= summary["runs"][-1]["workers"] <= 2  # workers connected at the peak, not the local count
    assert_same_outputs(reference, run)
    # Closing the cluster cancels its jobs rather than leaving them to run out their walltime.
    wait_for(lambda: not _in_queue(job_ids), 60, "the worker jobs to leave the queue")


def test_slurm_cluster_with_gpus_per_job_pins_a_worker_per_gpu(slurm_cluster, tmp_path, speech_dir, reference):
    config_path, config = prepared(tmp_path, speech_dir, cluster="slurm", interface="lo", workers=5, slurm_cluster={
        "jobs": 1, "cores": 2, "processes": 2, "gpus_per_job": 1, "memory": "2GB", "walltime": "00:10:00"})
    result = preprocess_here(config_path)
    assert "dask:   | #SBATCH --gres=gpu:1" in result.stdout
    assert "-m pipeline.preprocess.node_workers tls://" in result.stdout
    assert "2 workers (1 GPU workers for features and images, 1 CPU workers for decoding) connected" in result.stdout

    run = Path(config.run_dir)
    logs = "".join(p.read_text() for p in (run / "slurm" / "logs").glob("preprocess-dask-*"))
    # The GPU SLURM gave the job: 0 on an idle cluster, another while other jobs hold GPUs of the node.
    assert re.search(r"GPU workers \(CUDA_VISIBLE_DEVICES \d\) for features and images, 1 CPU workers for decoding",
                     logs), logs
    summary = json.loads((run / "features" / "summary.json").read_text())
    assert set(summary["tasks_per_node"]) <= NODES, summary["tasks_per_node"]
    assert_same_outputs(reference, run)
    job_ids = {p.stem.rsplit("-", 1)[1] for p in (run / "slurm" / "logs").glob("preprocess-dask-*.err")}
    wait_for(lambda: not _in_queue(job_ids), 60, "the worker job to leave the queue")


def test_preprocess_sbatch_on_nodes_with_gpus_pins_a_worker_per_gpu(slurm_cluster, tmp_path, speech_dir, reference):
    """slurm/preprocess.sbatch by hand with `--gres=gpu:2` on both nodes: on each, srun's launcher starts one worker
    per GPU (CUDA_VISIBLE_DEVICES 0 and 1) and one CPU worker, and the attached run splits its tasks."""
    config_path, config = prepared(tmp_path, speech_dir)
    log = tmp_path / "preprocess.out"
    env = {**os.environ, "CONFIG": str(config_path), "PYTHON": sys.executable}
    job = subprocess.run(["sbatch", "--parsable", "--nodes=2", "--cpus-per-task=3", "--gres=gpu:2",
                          f"--output={log}", str(ROOT / "slurm" / "preprocess.sbatch")], capture_output=True,
                         text=True, env=env, cwd=ROOT, check=True).stdout.strip().split(";")[0]
    state = wait_for(lambda: _finished_state(job), 300, f"preprocess job {job} to finish", every=2)
    text = log.read_text()
    assert state == "COMPLETED", text[-3000:]
    assert "2 node(s) x 3 Dask workers, GPUs per node: 2 (preprocess.device auto)" in text
    for node in sorted(NODES):
        assert f"node_workers: {node}: 2 GPU workers (CUDA_VISIBLE_DEVICES 0, 1) for features and images, 1 CPU " \
               "workers for decoding" in text, text[-3000:]
    assert "with 6 workers (4 GPU workers for features and images, 2 CPU workers for decoding)" in text
    assert "dask: attached to tls://" in text
    summary = json.loads((Path(config.run_dir) / "features" / "summary.json").read_text())
    assert set(summary["tasks_per_node"]) <= NODES, summary["tasks_per_node"]
    assert summary["runs"][-1]["workers"] == 6
    assert_same_outputs(reference, Path(config.run_dir))


@pytest.mark.skipif(not HAS_MPI, reason="the mpi extra is not installed (pip install -e '.[mpi]')")
def test_dask_mpi_batch_job_across_two_nodes_gives_the_same_outputs_as_serial(slurm_cluster, tmp_path, speech_dir,
                                                                              reference):
    config_path, config = prepared(tmp_path, speech_dir, workers=5)  # not used by dask-mpi: ranks decide
    log = tmp_path / "preprocess-mpi.out"
    env = {**MPI_ENV, "CONFIG": str(config_path), "PYTHON": sys.executable, "INTERFACE": "lo"}
    job = subprocess.run(["sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=2", f"--output={log}",
                          str(ROOT / "slurm" / "preprocess-mpi.sbatch")], capture_output=True, text=True,
                         env=env, cwd=ROOT, check=True).stdout.strip().split(";")[0]
    state = wait_for(lambda: _finished_state(job), 300, f"MPI job {job} to finish", every=2)
    text = log.read_text()
    assert state == "COMPLETED", text[-3000:]
    assert "4 MPI ranks, 2 Dask workers" in text and "dask: MPI, 2 worker ranks" in text
    assert "scheduler at tls://" in text and "(localhost only; from another machine: ssh -L " in text
    summary = json.loads((Path(config.run_dir) / "features" / "summary.json").read_text())
    assert set(summary["tasks_per_node"]) <= NODES, summary["tasks_per_node"]
    assert summary["runs"][-1]["workers"] == 2
    assert_same_outputs(reference, Path(config.run_dir))


def _in_queue(job_ids: set[str]) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(sorted(job_ids))], capture_output=True,
                         text=True, check=False).stdout
    return [line for line in out.split() if line in job_ids]


def _finished_state(job: str) -> str | None:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job], capture_output=True, text=True,
                         check=False).stdout.split()
    return out[0] if out and out[0] in FINISHED else None
