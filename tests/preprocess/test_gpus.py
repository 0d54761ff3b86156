"""One feature worker per GPU (`preprocess.gpus`): the plan from a faked GPU count, the workers' environments and
resources, the split decode -> features path on a real SpecCluster (run on the CPU here: the "GPU" workers see no
GPU, so `device: auto` computes their features on the CPU and the outputs must equal a serial run), and the refusal
of a fork pool after CUDA was initialised. Then the same workers started outside a LocalCluster: the per-node
launcher of the SLURM workers (`preprocess.node_workers`) against a real scheduler, a cluster attached through a
scheduler file splitting its tasks when its workers report GPUs, and the roles of dask-mpi's ranks."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch
from distributed import Client

from pipeline.preprocess import gpus, node_workers, security
from pipeline.preprocess.cluster import dask_executor
from pipeline.preprocess.gpus import WorkerPlan, check_pool, plan_workers, visible_gpus, worker_specs
from pipeline.preprocess.run import preprocess
from tests.preprocess.compare import assert_same_outputs, prepared, serial_run
from tests.slurm.conftest import wait_for


def test_without_gpus_or_on_cpu_the_workers_are_todays():
    assert plan_workers(4, "auto", []) == WorkerPlan((), 4)
    assert plan_workers(4, "cuda", []) == WorkerPlan((), 4)  # the workers then fail with "sees no GPU", as today
    assert plan_workers(4, "cpu", ["0", "1"]) == WorkerPlan((), 4)
    assert not plan_workers(4, "cpu", ["0"]).uses_gpus


@pytest.mark.parametrize(("workers", "gpu_count", "cpu_workers"), [(8, 2, 6), (2, 2, 1), (1, 4, 1), (16, 8, 8)])
def test_one_gpu_worker_per_gpu_and_the_rest_decode(workers, gpu_count, cpu_workers):
    plan = plan_workers(workers, "auto", visible_gpus(None, gpu_count))
    assert plan.gpu_devices == tuple(str(i) for i in range(gpu_count))
    assert plan.cpu_workers == cpu_workers and plan.uses_gpus


def test_gpu_workers_keep_the_devices_this_process_was_given():
    assert visible_gpus("2,3", 2) == ["2", "3"]  # e.g. SLURM gave this job GPUs 2 and 3
    assert visible_gpus("GPU-aa, GPU-bb", 2) == ["GPU-aa", "GPU-bb"]
    assert visible_gpus("", 0) == [] and visible_gpus(None, 3) == ["0", "1", "2"]
    assert visible_gpus("0,1,2,3", 2) == ["0", "1"]  # torch counts fewer (a bad entry ends the list)


def test_each_worker_gets_its_own_device_and_resource():
    specs = worker_specs(WorkerPlan(("0", "1"), 2), ["pipeline.preprocess.cluster"])
    options = {name: spec["options"] for name, spec in specs.items()}
    assert sorted(options) == ["cpu-0", "cpu-1", "gpu-0", "gpu-1"]
    assert options["gpu-1"]["env"] == {"CUDA_VISIBLE_DEVICES": "1"} and options["gpu-1"]["resources"] == {"GPU": 1}
    assert options["cpu-0"]["env"] == {"CUDA_VISIBLE_DEVICES": ""} and options["cpu-0"]["resources"] == {"DECODE": 1}
    assert all(o["nthreads"] == 1 for o in options.values())


def test_local_plan_counts_gpus_without_touching_cuda_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpus.local_plan(3, "auto") == WorkerPlan(("0", "1"), 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    assert gpus.local_plan(3, "cuda") == WorkerPlan(("5", "7"), 1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: pytest.fail("counted GPUs for device: cpu"))
    assert gpus.local_plan(3, "cpu") == WorkerPlan((), 3)


def test_split_gpu_workers_give_the_same_outputs_as_serial(tmp_path, speech_dir, monkeypatch):
    reference = serial_run(tmp_path / "a", speech_dir)
    _, config = prepared(tmp_path / "b", speech_dir)
    monkeypatch.setattr(gpus, "local_plan", lambda workers, device: WorkerPlan(("0",), 1))
    with dask_executor(config.preprocess) as executor:
        assert isinstance(executor, gpus.SplitExecutor)
        environments = executor._client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        resources = {w["id"]: w["resources"] for w in executor._client.scheduler_info()["workers"].values()}
        summary = preprocess(config, executor)
    assert sorted(environments.values()) == ["", "0"]
    assert all(address.startswith("tls://127.0.0.1:") for address in environments)  # TLS, on localhost only
    assert sorted(resources.items()) == [("cpu-0", {"DECODE": 1}), ("gpu-0", {"GPU": 1})]
    assert summary.runs[-1].workers == 2
    assert_same_outputs(reference, config.run_dir)


def test_a_task_over_the_size_limit_runs_whole_on_the_gpu_worker(tmp_path, speech_dir, monkeypatch):
    """With every file over `task_megabytes`, each task is one file that streams on the GPU worker rather than
    crossing from a decode worker in memory: no decode task runs, and the outputs are a serial run's."""
    oversized = {"task_megabytes": 0.01}
    reference = serial_run(tmp_path / "a", speech_dir, **oversized)
    _, config = prepared(tmp_path / "b", speech_dir, **oversized)
    monkeypatch.setattr(gpus, "local_plan", lambda workers, device: WorkerPlan(("0",), 1))
    with dask_executor(config.preprocess) as executor:
        assert isinstance(executor, gpus.SplitExecutor)
        preprocess(config, executor)
        prefixes = executor._client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert "run_task" in prefixes and "decode_task" not in prefixes, prefixes
    assert_same_outputs(reference, config.run_dir)


def test_a_fork_pool_after_cuda_init_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    fork = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
    spawn = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        with pytest.raises(RuntimeError, match="mp_context=multiprocessing.get_context\\('spawn'\\)"):
            check_pool(fork, "auto")
        check_pool(fork, "cpu")
        check_pool(spawn, "cuda")
        check_pool(None, "cuda")
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
        check_pool(fork, "cuda")  # nothing initialised CUDA here: the children may still
    finally:
        fork.shutdown()
        spawn.shutdown()


# Workers started outside a LocalCluster: the per-node launcher, an attached cluster, dask-mpi's ranks.

def test_node_gpus_trusts_the_nodes_list_and_outside_slurm_counts(monkeypatch):
    assert gpus.node_gpus({"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_JOB_ID": "7"}, "auto") == ["0", "1"]
    assert gpus.node_gpus({"CUDA_VISIBLE_DEVICES": "GPU-aa,GPU-bb"}, "cuda") == ["GPU-aa", "GPU-bb"]
    assert gpus.node_gpus({"CUDA_VISIBLE_DEVICES": "0,1"}, "cpu") == []
    assert gpus.node_gpus({"CUDA_VISIBLE_DEVICES": ""}, "auto") == []
    assert gpus.node_gpus({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, "auto") == []  # SLURM: GPUs without device files
    monkeypatch.setattr(torch.cuda, "device_count", lambda: pytest.fail("counted the GPUs of a SLURM node"))
    assert gpus.node_gpus({"SLURM_JOB_ID": "7"}, "auto") == []  # a job without --gres=gpu owns no GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert gpus.node_gpus({}, "auto") == ["0", "1"]


def test_launcher_options_are_its_own_and_the_rest_goes_to_dask_worker():
    args, forward = node_workers.parse(["tcp://h:1", "--name", "job-3", "--nthreads", "2", "--memory-limit", "1GB",
                                        "--lifetime", "510s", "--nworkers", "3", "--device", "cuda", "--interface",
                                        "lo", "--nanny"])
    assert (args.nworkers, args.nthreads, args.device, args.name) == (3, 2, "cuda", "job-3")
    assert forward == ["tcp://h:1", "--memory-limit", "1GB", "--lifetime", "510s", "--interface", "lo", "--nanny"]


def test_launcher_commands_pin_each_gpu_worker_and_name_workers_as_dask_jobqueue_does():
    named = node_workers.worker_commands(WorkerPlan(("2", "5"), 2), ["tcp://h:1"], 1, "job-3")
    assert [(c.argv[c.argv.index("--name") + 1], c.cuda_visible_devices) for c in named] == \
        [("job-3-0", "2"), ("job-3-1", "5"), ("job-3-2", ""), ("job-3-3", "")]
    assert all(c.argv[1:5] == ["-m", "distributed.cli.dask_worker", "tcp://h:1", "--nthreads"] for c in named)
    assert [c.argv[c.argv.index("--resources") + 1] for c in named] == ["GPU=1", "GPU=1", "DECODE=1", "DECODE=1"]
    assert all(c.argv[c.argv.index("--nworkers") + 1] == "1" for c in named)
    unnamed = node_workers.worker_commands(WorkerPlan(("0",), 3), ["--scheduler-file", "f"], 1, None)
    assert [c.cuda_visible_devices for c in unnamed] == ["0", ""]  # the CPU workers share one command
    assert unnamed[1].argv[-4:] == ["--resources", "DECODE=1", "--nworkers", "3"]


def test_without_gpus_the_launcher_becomes_todays_dask_worker(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(os, "execv", lambda path, argv: calls.append((path, argv)))
    monkeypatch.setattr(node_workers, "run_all", lambda commands: pytest.fail("started GPU workers"))
    for visible, device in [("", "auto"), ("0,1", "cpu")]:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        node_workers.main(["--scheduler-file", "f", "--nworkers", "4", "--nthreads", "1", "--device", device])
    assert calls == [(sys.executable, [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", "f",
                                       "--nthreads", "1", "--nworkers", "4"])] * 2
    assert "4 Dask workers (no GPU in CUDA_VISIBLE_DEVICES)" in capsys.readouterr().out


@pytest.mark.parametrize(("workers", "gpu_list", "roles"), [
    (3, ["0", "1"], [("0", {"GPU": 1}), ("1", {"GPU": 1}), ("", {"DECODE": 1})]),
    (2, ["0", "1", "2"], [("0", {"GPU": 1}), ("", {"DECODE": 1})]),  # one rank is always left to decode
    (1, ["4"], [("4", {"GPU": 1, "DECODE": 1})]),  # a lone rank does both halves
    (2, [], [(None, {}), (None, {})]),  # no GPU: today's workers
])
def test_each_dask_mpi_worker_rank_of_a_node_gets_its_role(workers, gpu_list, roles):
    assert [gpus.rank_role(i, workers, gpu_list) for i in range(workers)] == roles


def test_tasks_are_split_only_when_some_workers_take_each_half():
    def info(*resources: dict) -> dict:
        return {f"w{i}": {"resources": r} for i, r in enumerate(resources)}

    assert gpus.splits_tasks(info({"GPU": 1.0}, {"DECODE": 1.0}, {}))
    assert gpus.splits_tasks(info({"GPU": 1, "DECODE": 1}))
    assert not gpus.splits_tasks(info({"GPU": 1.0}))  # the decode halves would wait for ever
    assert not gpus.splits_tasks(info({}, {})) and not gpus.splits_tasks({})
    assert gpus.resource_counts(info({"GPU": 1.0}, {"DECODE": 1.0}, {"DECODE": 1.0})) == (1, 2)


@contextlib.contextmanager
def _scheduler(tmp_path: Path) -> Iterator[Path]:
    """A `dask scheduler` process, as slurm/preprocess.sbatch starts one (TLS, with credentials beside its scheduler
    file), and its scheduler file."""
    path = tmp_path / "dask-scheduler-7.json"
    tls = security.make(security.folder_for(path)).dask_options()
    process = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file",
                                str(path), "--protocol", "tls", "--port", "0", *tls, "--dashboard-address",
                                "127.0.0.1:0"], env=_ENV)
    try:
        wait_for(path.is_file, 60, "the scheduler file")
        yield path
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextlib.contextmanager
def _launcher(scheduler_file: Path, visible: str, nworkers: int) -> Iterator[subprocess.Popen]:
    """`python -m pipeline.preprocess.node_workers` as srun starts it on a node with CUDA_VISIBLE_DEVICES `visible`
    (fake GPUs: nothing here opens them), once all its workers are in."""
    credentials = _credentials(scheduler_file)
    process = subprocess.Popen([sys.executable, "-m", "pipeline.preprocess.node_workers", "--scheduler-file",
                                str(scheduler_file), "--nworkers", str(nworkers), "--nthreads", "1",
                                *credentials.dask_options()], env={**_ENV, "CUDA_VISIBLE_DEVICES": visible})
    try:
        expected = len(visible.split(",")) + max(1, nworkers - len(visible.split(",")))
        with _client(scheduler_file) as client:
            client.wait_for_workers(expected, timeout=60)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


def _credentials(scheduler_file: Path) -> security.Credentials:
    return security.load(security.folder_for(scheduler_file))


def _client(scheduler_file: Path) -> Client:
    """A client of the scheduler of `_scheduler`, with its credentials."""
    return Client(scheduler_file=str(scheduler_file), security=_credentials(scheduler_file).security(), timeout=60)


_ENV = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")} | {"DASK_LOGGING__DISTRIBUTED": "warning"}


def test_launcher_pins_one_worker_per_gpu_and_an_attached_run_splits_its_tasks(tmp_path, speech_dir):
    """The workers of one node with GPUs "0,1" and 3 CPUs: 2 GPU workers, each seeing only its own GPU, and 1 CPU
    worker without any; `preprocess.scheduler_file` attached to them splits the tasks and gives a serial run's
    outputs (computed on the CPU: the GPUs are fake)."""
    reference = serial_run(tmp_path / "serial", speech_dir)
    with _scheduler(tmp_path) as scheduler_file, _launcher(scheduler_file, "0,1", 3):
        def view(dask_worker) -> tuple[str, dict]:
            return os.environ["CUDA_VISIBLE_DEVICES"], dict(dask_worker.state.total_resources)

        with _client(scheduler_file) as client:
            seen = client.run(view)
        assert sorted(seen.values()) == [("", {"DECODE": 1}), ("0", {"GPU": 1}), ("1", {"GPU": 1})]
        assert all(address.startswith("tls://") for address in seen), seen  # the workers listen with TLS too
        _, config = prepared(tmp_path / "attached", speech_dir, scheduler_file=str(scheduler_file), workers=3)
        with dask_executor(config.preprocess) as executor:
            assert isinstance(executor, gpus.SplitExecutor)
            summary = preprocess(config, executor)
    assert summary.runs[-1].workers == 3
    assert_same_outputs(reference, config.run_dir)


def test_sigterm_to_the_launcher_stops_every_worker_it_started(tmp_path):
    """What scancel, or the batch script's exit trap through srun, does to the launcher: its workers go too."""
    with _scheduler(tmp_path) as scheduler_file, _launcher(scheduler_file, "3", 2) as launcher:
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=60)
        with _client(scheduler_file) as client:
            wait_for(lambda: not client.scheduler_info()["workers"], 30, "the workers to leave the scheduler")
