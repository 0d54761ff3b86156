"""What real clusters need from the scripts: setup lines, GPU request forms, --exclusive, CPUs per GPU rank, the
warning signal, and requeue from the batch script. One golden file per form; the defaults stay those of
test_scripts.py's golden files."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.slurm.scripts import experiment_jobs
from pipeline.slurm.submitit_jobs import parameters
from tests.slurm.test_scripts import GOLDEN, UPDATE, scripts_of, write_config

SETUP = ["module load cuda/12.4", "source ~/venvs/x/bin/activate", "export NCCL_SOCKET_IFNAME=ib0"]
FORMS = {
    "gpus-per-node": {"slurm": {"gpu_request": "gpus-per-node"}},
    "gpus-per-task": {"slurm": {"gpu_request": "gpus-per-task", "cpus_per_gpu_rank": 8, "exclusive": True}},
    "setup-usr2": {"slurm": {"setup": SETUP, "signal": "USR2"}, "train": {"loader_workers": 3}},
    "requeue-script": {"slurm": {"requeue_by": "script"}},
}


def check_golden(name: str, text: str) -> None:
    golden = GOLDEN / f"{name}.sbatch"
    if UPDATE:
        golden.write_text(text)
    assert text == golden.read_text(), f"{name} differs from {golden} (PIPELINE_UPDATE_GOLDEN=1 rewrites it)"
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0, name


@pytest.mark.parametrize("form", FORMS)
def test_each_cluster_form_has_its_golden_train_script(tmp_path, form):
    scripts = scripts_of(write_config(tmp_path, **FORMS[form]))
    check_golden(f"train-ws2-cuda-bs32-{form}", scripts["train-ws2-cuda-bs32"])


def test_setup_lines_go_verbatim_into_every_job_after_the_sbatch_header(tmp_path):
    scripts = scripts_of(write_config(tmp_path, slurm={"setup": SETUP}))
    check_golden("preprocess-setup", scripts["preprocess"])
    for name, text in scripts.items():
        lines = text.splitlines()
        at = lines.index("# pipeline: setup (slurm.setup, verbatim)")
        assert lines[at + 1:at + 4] == SETUP, name
        assert max(i for i, line in enumerate(lines) if line.startswith("#SBATCH")) < at < lines.index(
            "# pipeline: body"), name


def test_the_gpu_forms_and_cpus_per_rank(tmp_path):
    per_task = scripts_of(write_config(tmp_path, **FORMS["gpus-per-task"]))["train-ws4-cuda-bs32"]
    assert "#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=2\n#SBATCH --cpus-per-task=8\n#SBATCH --gpus-per-task=1\n" \
        in per_task and "#SBATCH --exclusive\n" in per_task and "#SBATCH --gres" not in per_task
    per_node = scripts_of(write_config(tmp_path, **FORMS["gpus-per-node"]))["train-ws4-cuda-bs32"]
    assert "#SBATCH --gpus-per-node=2\n" in per_node and "--exclusive" not in per_node
    # Without cpus_per_gpu_rank a rank gets its threads and its loader workers; CPU ranks too.
    loaders = scripts_of(write_config(tmp_path, train={"loader_workers": 3}))["train-ws2-cuda-bs32"]
    assert "#SBATCH --cpus-per-task=7\n" in loaders
    cpu = scripts_of(write_config(tmp_path, slurm={"gpus_per_node": 0, "cpus_per_gpu_rank": 8},
                                  train={"loader_workers": 2}))["train-ws2-cpu-bs32"]
    assert "#SBATCH --cpus-per-task=6\n" in cpu
    # The preprocessing job asks for GPUs only when told, in the per-node forms (one task per node runs them all).
    plain = scripts_of(write_config(tmp_path))["preprocess"]
    assert "#SBATCH --gres" not in plain and "#SBATCH --gpus" not in plain
    gpus = scripts_of(write_config(tmp_path, slurm={"preprocess_gpus_per_node": 2}))["preprocess"]
    assert "#SBATCH --cpus-per-task=16\n#SBATCH --gres=gpu:2\n" in gpus
    per_node = scripts_of(write_config(tmp_path, slurm={"preprocess_gpus_per_node": 2,
                                                        "gpu_request": "gpus-per-node"}))["preprocess"]
    assert "#SBATCH --gpus-per-node=2\n" in per_node
    per_task = scripts_of(write_config(tmp_path, slurm={"preprocess_gpus_per_node": 2,
                                                        "gpu_request": "gpus-per-task"}))["preprocess"]
    assert "#SBATCH --gres=gpu:2\n" in per_task
    # Preprocess and report jobs keep their own shape, and --exclusive is for training only.
    assert "--exclusive" not in scripts_of(write_config(tmp_path, slurm={"exclusive": True}))["report"]


@pytest.mark.parametrize("key, value", [("setup", ["module load x\nrm -rf /"]), ("setup", ["a\rb"]),
                                        ("setup", ["x\0y"]), ("setup", ["#SBATCH --exclusive"]),
                                        ("signal", "HUP"), ("gpu_request", "gpus"), ("requeue_by", "node"),
                                        ("cpus_per_gpu_rank", -1), ("preprocess_gpus_per_node", 16),
                                        ("preprocess_gpus_per_node", -1)])
def test_bad_values_of_the_new_keys_are_refused(tmp_path, key, value):
    with pytest.raises(ConfigError, match=f"slurm.{key}"):
        load_config(write_config(tmp_path, slurm={key: value}))


def test_submitit_gets_the_same_setup_gpu_form_signal_and_exclusive(tmp_path):
    config = load_config(write_config(tmp_path, slurm={**FORMS["gpus-per-task"]["slurm"], "setup": SETUP,
                                                       "signal": "USR2"}))
    train = next(job for job in experiment_jobs(config) if job.name == "train-ws2-cuda-bs32")
    params = parameters(config, train, "slurm")
    extra = params["slurm_additional_parameters"]
    assert params["slurm_setup"] == SETUP and "slurm_gres" not in params
    assert (extra["gpus-per-task"], extra["exclusive"], extra["signal"]) == ("1", True, "USR2@90")
    assert params["cpus_per_task"] == 8 and params["tasks_per_node"] == 2
    default = load_config(write_config(tmp_path))
    params = parameters(default, next(j for j in experiment_jobs(default) if j.stage == "train"), "slurm")
    assert params["slurm_gres"] == "gpu:1" and "slurm_setup" not in params
    assert params["slurm_additional_parameters"]["signal"] == "USR1@90"


def fake_bin(folder: Path, name: str, body: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(f"#!/bin/bash\n{body}\n")
    (folder / name).chmod(0o755)


@pytest.mark.parametrize(("status", "requeued"), [(75, True), (0, False), (1, False)])
def test_the_requeue_script_requeues_on_exit_75_only(tmp_path, status, requeued):
    """The batch script of `requeue_by: script`, run by bash with a stand-in pipeline that exits `status` and a
    recording `scontrol`: it requeues the job after a checkpointed stop, keeps the exit status, and nothing else."""
    bin_dir = tmp_path / "bin"
    fake_bin(bin_dir, "scontrol", f'echo "$@" >> {tmp_path}/scontrol.txt')
    fake_bin(bin_dir, "python", f"exit {status}")
    path = write_config(tmp_path, run_dir=str(tmp_path / "run"),
                        slurm={"requeue_by": "script", "python": str(bin_dir / "python")})
    script = scripts_of(path)["train-ws2-cuda-bs32"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", SLURM_JOB_ID="4242")
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == status, result.stderr
    calls = (tmp_path / "scontrol.txt").read_text().splitlines() if (tmp_path / "scontrol.txt").exists() else []
    assert calls == (["requeue 4242"] if requeued else [])


def test_the_requeue_script_is_used_only_when_training_requeues(tmp_path):
    config = load_config(write_config(tmp_path, slurm={"requeue_by": "script"}, train={"requeue": False}))
    assert {job.template for job in experiment_jobs(config) if job.stage == "train"} == {"train"}


def test_hand_submittable_copies_match_the_templates():
    root = Path(__file__).resolve().parents[2]
    for template in (root / "pipeline/slurm/scripts").glob("*.sbatch"):
        assert (root / "slurm" / template.name).read_text() == template.read_text(), template.name
