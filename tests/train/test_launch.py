import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.preprocess.run import preprocess
from pipeline.stages import data_stage
from pipeline.sweep import TrainingRun, plan, split_repeat
from pipeline.train import launch as launch_module
from pipeline.train.distributed import from_environment, master_port_for
from pipeline.train.environment import available_cores, visible_gpus
from pipeline.train.launch import device_choice, launch_command, named_run, pick_device, train_all
from tests.conftest import tiny_experiment


def test_configurations_beyond_the_cores_are_skipped_with_a_reason(tmp_path, speech_dir):
    too_many = available_cores() + 1
    config = load_config(tiny_experiment(tmp_path, speech_dir, train={"world_sizes": [too_many], "device": "cpu"}))
    data_stage(config)
    preprocess(config)
    assert [r.name for r in plan(config, pick_device)] == [f"ws{too_many}-cpu-bs8"]
    (folder,) = train_all(config, tmp_path / "unused.yaml")
    skipped = json.loads((Path(folder) / "skipped.json").read_text())
    assert skipped["world_size"] == too_many
    assert f"the machine gives {available_cores()}" in skipped["reason"]
    assert not (Path(folder) / "metrics.json").exists()


def test_auto_device_is_cpu_without_gpus():
    # Against an explicit GPU count, so it holds on any machine (the default counts this machine's GPUs).
    assert pick_device("auto", 1, gpus=0) == "cpu"
    assert pick_device("cpu", 4, gpus=0) == "cpu"
    assert pick_device("cpu", 1, gpus=8) == "cpu"
    assert pick_device("auto", 1) == ("cuda" if visible_gpus() >= 1 else "cpu")


def test_auto_device_takes_a_gpu_per_rank_and_says_why_a_run_got_its_device():
    assert device_choice("auto", 1, gpus=1) == ("cuda", "train.device auto and a GPU per rank (1 rank, this "
                                                        "machine has 1)")
    assert device_choice("auto", 2, gpus=1) == ("cpu", "train.device auto and 2 ranks need 2 GPUs, this machine "
                                                       "has 1")
    assert device_choice("cpu", 2, gpus=1) == ("cpu", "train.device cpu")
    assert device_choice("cuda", 2, gpus=4)[0] == "cuda"
    with pytest.raises(RuntimeError, match="train.device: cuda asked for 2 GPUs, this machine has 1"):
        pick_device("cuda", 2, gpus=1)


def test_a_named_cuda_configuration_needs_a_gpu_per_rank_before_anything_starts(tmp_path):
    """`--configuration ws<N>-cuda-...` with fewer GPUs than ranks: exit 2 naming what to do, before the features
    are even looked at (there are none here) and before any rank starts (NCCL refuses ranks sharing a GPU)."""
    ranks = max(2, visible_gpus() + 1)  # more ranks than this machine has GPUs, whatever it has
    config = tiny_experiment(tmp_path, tmp_path, train={"world_sizes": [1, ranks]})
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pipeline", "train", str(config), "--configuration",
                             f"ws{ranks}-cuda-bs8"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert (f"--configuration ws{ranks}-cuda-bs8: {ranks} cuda ranks need {ranks} GPUs, this machine has "
            f"{visible_gpus()}") in result.stderr
    assert "--launcher srun" in result.stderr and f"--configuration ws{ranks}-cpu-bs8" in result.stderr
    assert "no features yet" not in result.stderr and not (tmp_path / "run" / "configs").exists()
    assert time.monotonic() - started < 60
    loaded = load_config(config)
    with pytest.raises(ValueError, match="2 cuda ranks need 2 GPUs, this machine has 1 .*ranks sharing a GPU.* "
                                         "at most 1 rank"):
        named_run("ws2-cuda-bs8", load_config(tiny_experiment(tmp_path, tmp_path, train={"world_sizes": [2]})),
                  "torchrun", gpus=1)
    run, why = named_run(f"ws{ranks}-cpu-bs8", loaded, "torchrun", gpus=0)
    assert (run.device, why) == ("cpu", f"--configuration ws{ranks}-cpu-bs8 names cpu")
    assert named_run("ws1-cuda-bs8", loaded, "torchrun", gpus=1)[0].device == "cuda"


def test_under_srun_a_named_cuda_configuration_is_checked_against_the_allocations_gpus(tmp_path):
    config = load_config(tiny_experiment(tmp_path, tmp_path, train={"world_sizes": [4]}))
    job = {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2"}
    with pytest.raises(ValueError, match="2 cuda ranks per node need 2 GPUs per node, the SLURM allocation gives 1"):
        named_run("ws4-cuda-bs8", config, "srun", environ={**job, "SLURM_GPUS_ON_NODE": "1"})
    run, why = named_run("ws4-cuda-bs8", config, "srun", gpus=0, environ={**job, "SLURM_GPUS_ON_NODE": "2"})
    assert run.device == "cuda" and "2 rank(s) per node on the 2 GPU(s) per node" in why
    # SLURM does not say how many GPUs a node has: the allocation is SLURM's business, nothing is refused here
    assert named_run("ws4-cuda-bs8", config, "srun", gpus=0, environ=job)[0].device == "cuda"


def test_the_device_reason_reaches_the_ranks_as_a_worker_argument(tmp_path, monkeypatch):
    config = load_config(tiny_experiment(tmp_path, tmp_path, train={"world_sizes": [1], "max_restarts": 0}))
    (run,) = plan(config, pick_device)
    seen = []

    def fake_run(command, env, log):
        seen.append(command)
        return 1

    monkeypatch.setattr(launch_module, "run_ranks", fake_run)
    with pytest.raises(RuntimeError, match="failed"):
        launch_module.launch(run, config, tmp_path / "c.yaml", tmp_path / "out", "torchrun",
                             device_reason="train.device cpu")
    (command,) = seen
    assert command[command.index("--device-reason") + 1] == "train.device cpu"
    assert "--device-reason" not in launch_command(run, tmp_path / "c.yaml", tmp_path / "out", "torchrun")


def test_the_sweep_crosses_world_sizes_and_batch_sizes_and_names_parse_back(tmp_path, speech_dir):
    config = load_config(tiny_experiment(tmp_path, speech_dir, train={"world_sizes": [1, 2], "batch_sizes": [4, 16],
                                                                      "device": "cpu"}))
    names = [r.name for r in plan(config, pick_device)]
    assert names == ["ws1-cpu-bs4", "ws1-cpu-bs16", "ws2-cpu-bs4", "ws2-cpu-bs16"]
    assert [TrainingRun.parse(name, config).name for name in names] == names
    for name, message in [("ws4-cpu-bs4", "world size 4 is not in train.world_sizes"),
                          ("ws1-cpu-bs8", "batch size 8 per rank is not in the sweep at 1 rank,"),
                          ("fast", "expected a name like")]:
        with pytest.raises(ValueError, match=message):
            TrainingRun.parse(name, config)


def test_srun_step_variables_define_the_ranks():
    env = {"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_NNODES": "4",
           "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[01-04]",
           "SLURM_STEP_NODELIST": "gpu[03-04]", "SLURM_JOB_ID": "1234"}
    ranks = from_environment(env)
    assert (ranks.rank, ranks.local_rank, ranks.world_size, ranks.local_world_size, ranks.nodes) == (3, 1, 4, 2, 2)
    assert ranks.launcher == "srun" and ranks.master_port == master_port_for("1234") != 29500
    assert ranks.master_addr == "gpu03"  # the step's first node, not the job's


def test_repeats_add_a_numbered_run_per_configuration_and_parse_back(tmp_path):
    config = load_config(tiny_experiment(tmp_path, tmp_path, train={"world_sizes": [1, 2], "repeats": 2,
                                                                     "device": "cpu"}))
    runs = plan(config, pick_device)
    assert [r.name for r in runs] == ["ws1-cpu-bs8-r1", "ws1-cpu-bs8-r2", "ws2-cpu-bs8-r1", "ws2-cpu-bs8-r2"]
    assert {r.configuration for r in runs} == {"ws1-cpu-bs8", "ws2-cpu-bs8"}
    assert [TrainingRun.parse(r.name, config) for r in runs] == runs
    for name, message in [("ws1-cpu-bs8-r3", "train.repeats is 2, so name one repeat from ws1-cpu-bs8-r1 to "
                                             "ws1-cpu-bs8-r2"),
                          ("ws1-cpu-bs8-r0", "train.repeats is 2"), ("ws1-cpu-bs8", "train.repeats is 2")]:
        with pytest.raises(ValueError, match=message):
            TrainingRun.parse(name, config)
    command = launch_command(runs[1], tmp_path / "c.yaml", tmp_path / "out", "torchrun")
    assert command[command.index("--repeat") + 1] == "2"


def test_one_repeat_keeps_the_names_without_suffix(tmp_path):
    config = load_config(tiny_experiment(tmp_path, tmp_path, train={"world_sizes": [2], "device": "cpu"}))
    (run,) = plan(config, pick_device)
    assert (run.name, run.repeat) == ("ws2-cpu-bs8", 0)
    assert "--repeat" not in launch_command(run, tmp_path / "c.yaml", tmp_path / "out", "srun")
    with pytest.raises(ValueError, match="train.repeats is 1, so names have no -r<k> suffix; use ws2-cpu-bs8"):
        TrainingRun.parse("ws2-cpu-bs8-r1", config)
    assert split_repeat("ws2-cpu-bs8") == ("ws2-cpu-bs8", 0)
    assert split_repeat("ws2-cpu-bs8-r12") == ("ws2-cpu-bs8", 12)


def test_restarts_reach_the_worker_as_an_argument(tmp_path):
    config = load_config(tiny_experiment(tmp_path, tmp_path, train={"world_sizes": [2], "device": "cpu"}))
    (run,) = plan(config, pick_device)
    first = launch_command(run, tmp_path / "c.yaml", tmp_path / "out", "torchrun")
    assert "--restarts" not in first  # a first start is the command as it always was
    again = launch_command(run, tmp_path / "c.yaml", tmp_path / "out", "srun", restarts=2)
    assert again[again.index("--restarts") + 1] == "2"
