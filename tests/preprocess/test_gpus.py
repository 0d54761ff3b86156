"""One feature worker per GPU (`preprocess.gpus`): the plan from a faked GPU count, the workers' environments and
resources, the split decode -> features path on a real SpecCluster (run on the CPU here: the "GPU" workers see no
GPU, so `device: auto` computes their features on the CPU and the outputs must equal a serial run), and the refusal
of a fork pool after CUDA was initialised."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

from pipeline.preprocess import gpus
from pipeline.preprocess.cluster import dask_executor
from pipeline.preprocess.gpus import WorkerPlan, check_pool, plan_workers, visible_gpus, worker_specs
from pipeline.preprocess.run import preprocess
from tests.preprocess.compare import assert_same_outputs, prepared, serial_run


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
    assert sorted(resources.items()) == [("cpu-0", {"DECODE": 1}), ("gpu-0", {"GPU": 1})]
    assert summary.runs[-1].workers == 2
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
