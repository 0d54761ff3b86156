"""`pipeline.Experiment`, the Python API the CLI is a shell over: the same config, scripts and jobs."""

from __future__ import annotations

import json
import subprocess
import sys

from pipeline import Experiment
from pipeline.config import load_config, load_experiment
from pipeline.slurm import submitit_jobs
from pipeline.slurm.scripts import experiment_jobs
from tests.conftest import tiny_experiment
from tests.slurm.test_local_cluster import pipeline
from tests.slurm.test_scripts import scripts_of, write_config


def test_importing_the_package_imports_neither_torch_nor_dask():
    code = ("import sys, pipeline; pipeline.Experiment; import pipeline.slurm.submit, pipeline.slurm.submitit_jobs; "
            "print(sorted(m for m in ('torch', 'dask', 'distributed') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_overrides_as_a_mapping_are_the_clis_set_strings(tmp_path, speech_dir):
    config = tiny_experiment(tmp_path, speech_dir)
    overrides = {"train.epochs": 5, "train.world_sizes": [1, 2], "name": "yes", "slurm.partition": None,
                 "preprocess.silence_threshold_db": -50.5, "train.channels_last": False,
                 "slurm.extra_options": ["--qos=high", "--constraint=a100"], "data.root": str(speech_dir),
                 "report.interconnect_gbit_s": 200}
    cli = ["train.epochs=5", "train.world_sizes=[1, 2]", "name='yes'", "slurm.partition=null",
           "preprocess.silence_threshold_db=-50.5", "train.channels_last=false",
           "slurm.extra_options=[--qos=high, --constraint=a100]", f"data.root={speech_dir}",
           "report.interconnect_gbit_s=200"]
    experiment = Experiment.load(config, overrides=overrides)
    assert experiment.config == load_experiment(config, cli)
    assert experiment.config.name == "yes" and experiment.config.slurm.extra_options[1] == "--constraint=a100"
    assert Experiment.load(config, cli).config == experiment.config
    shown = pipeline("config", str(config), *(f"--set={item}" for item in cli), "--get", "train.world_sizes")
    assert shown.stdout == "- 1\n- 2\n", shown.stderr
    # A run folder loads like the CLI's: its config.yaml, run_dir where the folder is.
    experiment.save_config()
    assert Experiment.load(tmp_path / "run", {"train.epochs": 1}).config == \
        load_experiment(tmp_path / "run", ["train.epochs=1"])
    assert experiment.layout.config == tmp_path / "run" / "config.yaml"


def test_submit_dry_run_writes_the_scripts_of_pipeline_submit(tmp_path, speech_dir):
    config = tiny_experiment(tmp_path, speech_dir, train={"world_sizes": [1, 2], "repeats": 2})
    scripts = tmp_path / "run" / "slurm" / "scripts"
    assert Experiment.load(config).submit(dry_run=True) == []
    written = {path.name: path.read_bytes() for path in sorted(scripts.iterdir())}
    for path in scripts.iterdir():
        path.unlink()
    result = pipeline("submit", str(config), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert {path.name: path.read_bytes() for path in sorted(scripts.iterdir())} == written
    assert len(written) == 6 and not (tmp_path / "run" / "slurm" / "jobs.json").exists()


def test_submitit_jobs_ask_for_the_resources_of_the_sbatch_scripts(tmp_path):
    """Every #SBATCH line of a generated script is in the submitit job's script, but the output file and the
    job name's source; submitit adds its own output, signal handling and wckey."""
    from submitit.slurm.slurm import _make_sbatch_string

    path = write_config(tmp_path)
    config = load_config(path)
    scripts = scripts_of(path)
    for job in experiment_jobs(config):
        params = submitit_jobs.parameters(config, job, "slurm", "afterok:1" if job.stage == "train" else None)
        named = {"nodes": params["nodes"], "ntasks_per_node": params["tasks_per_node"],
                 "cpus_per_task": params["cpus_per_task"], "job_name": params["name"],
                 "gres": params.get("slurm_gres"), "dependency": params.get("slurm_dependency")}
        text = _make_sbatch_string("true", tmp_path, use_srun=False, stderr_to_stdout=True,
                                   signal_delay_s=params.get("slurm_signal_delay_s", 90),
                                   additional_parameters=params["slurm_additional_parameters"],
                                   **{k: v for k, v in named.items() if v is not None})
        wanted = {line for line in scripts[job.name].splitlines() if line.startswith("#SBATCH")
                  and not line.startswith("#SBATCH --output=")}
        assert wanted <= set(text.splitlines()), (job.name, wanted - set(text.splitlines()))
        signal = "USR1@90" if job.stage == "train" else "USR2@0"  # only training is warned (at the limit: none)
        assert [line for line in text.splitlines() if "--signal" in line] == [f"#SBATCH --signal={signal}"]
    four = submitit_jobs.parameters(config, experiment_jobs(config)[3], "slurm", "afterok:1")
    assert four["slurm_additional_parameters"]["kill-on-invalid-dep"] == "yes"
    assert four["timeout_min"] == 240 and submitit_jobs.time_minutes("1-00:00:30") == 24 * 60 + 1
    assert submitit_jobs.parameters(config, experiment_jobs(config)[3], "local") == \
        {"name": "golden-train-ws4-cuda-bs32", "timeout_min": 240}


def test_submitit_local_executor_runs_the_stages_here_in_order(tmp_path, speech_dir):
    config = tiny_experiment(tmp_path, speech_dir, train={"world_sizes": [1], "epochs": 1})
    submitted = Experiment.load(config).submit(executor="submitit", cluster="local")
    run = tmp_path / "run"
    assert submitted.wait() == run / "report.md"
    assert list(submitted.train) == ["ws1-cpu-bs8"]
    assert submitted.train["ws1-cpu-bs8"].result() == run / "configs" / "ws1-cpu-bs8" / "metrics.json"
    assert "| ws1-cpu-bs8 |" in (run / "report.md").read_text()
    assert "via torchrun" not in submitted.train["ws1-cpu-bs8"].stdout()  # no script: the stage itself ran
    recorded = json.loads((run / "slurm" / "jobs.json").read_text())
    assert recorded["executor"] == "local"
    assert [(j["stage"], j["state"]) for j in recorded["jobs"]] == [
        ("preprocess", "COMPLETED"), ("train", "COMPLETED"), ("report", "COMPLETED")]
    assert all(str(run / "slurm" / "submitit") in j["log"] for j in recorded["jobs"])
    status = pipeline("status", str(run))
    assert status.returncode == 0 and status.stdout.count("COMPLETED") == 3, status.stdout
