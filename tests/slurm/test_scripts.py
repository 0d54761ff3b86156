"""Generated sbatch scripts: golden files, resources per configuration, and no way for a value to inject shell."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, load_config
from pipeline.slurm import jobs
from pipeline.slurm.jobs import JobRecord
from pipeline.slurm.scripts import experiment_scripts
from pipeline.sweep import TrainingRun

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("PIPELINE_UPDATE_GOLDEN") == "1"


def write_config(tmp_path: Path, **sections: object) -> Path:
    config = {"name": "golden", "run_dir": "results/golden",
              "train": {"world_sizes": [1, 2, 4], "batch_sizes": [32], "threads_per_rank": 4},
              "slurm": {"partition": "gpu", "account": "proj-42", "gpus_per_node": 2, "preprocess_nodes": 2,
                        "preprocess_cpus_per_node": 16, "memory": "64G", "python": "/opt/venv/bin/python",
                        "extra_options": ["--qos=normal", "--constraint=a100"]}}
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def scripts_of(path: Path) -> dict[str, str]:
    config = load_config(path)
    python = config.slurm.python
    return {s.name: s.text for s in experiment_scripts(config, Path(config.run_dir) / "config.yaml", python)}


def test_generated_scripts_match_the_golden_files(tmp_path):
    scripts = scripts_of(write_config(tmp_path))
    assert list(scripts) == ["preprocess", "train-ws1-cuda-bs32", "train-ws2-cuda-bs32", "train-ws4-cuda-bs32",
                             "report"]
    for name, text in scripts.items():
        golden = GOLDEN / f"{name}.sbatch"
        if UPDATE:
            golden.write_text(text)
        assert text == golden.read_text(), f"{name} differs from {golden} (PIPELINE_UPDATE_GOLDEN=1 rewrites it)"
        assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0, name


@pytest.mark.parametrize(("cluster", "golden"), [("mpi", "preprocess-mpi"), ("slurm", "preprocess-jobqueue")])
def test_the_preprocessing_job_follows_preprocess_cluster(tmp_path, cluster, golden):
    text = scripts_of(write_config(tmp_path, preprocess={"cluster": cluster}))["preprocess"]
    path = GOLDEN / f"{golden}.sbatch"
    if UPDATE:
        path.write_text(text)
    assert text == path.read_text(), f"{golden} differs from {path} (PIPELINE_UPDATE_GOLDEN=1 rewrites it)"
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_ranks_fill_nodes_of_gpus_evenly(tmp_path):
    scripts = scripts_of(write_config(tmp_path))
    four = scripts["train-ws4-cuda-bs32"]
    assert "#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=2\n#SBATCH --cpus-per-task=4\n#SBATCH --gres=gpu:2" in four
    assert "#SBATCH --signal=USR1@90\n#SBATCH --requeue\n" in four
    cpu = scripts_of(write_config(tmp_path, slurm={"gpus_per_node": 0, "cpu_ranks_per_node": 4}))
    assert "#SBATCH --gres" not in cpu["train-ws4-cpu-bs32"] and "#SBATCH --nodes=1" in cpu["train-ws4-cpu-bs32"]
    with pytest.raises(ValueError, match="3 ranks do not split evenly over 2 nodes"):
        scripts_of(write_config(tmp_path, train={"world_sizes": [3]}))


@pytest.mark.parametrize("key, value", [("partition", "gpu\n#SBATCH --wrap=x"), ("account", "a b"),
                                        ("memory", "64G; rm -rf /"), ("time_train", "$(reboot)"),
                                        ("extra_options", ["--qos=x\nrm -rf /"])])
def test_values_that_could_break_an_sbatch_line_are_refused(tmp_path, key, value):
    with pytest.raises(ConfigError, match=f"slurm.{key}"):
        load_config(write_config(tmp_path, slurm={key: value}))


def test_run_dir_that_sbatch_would_misread_is_refused(tmp_path):
    with pytest.raises(ValueError, match="run_dir"):
        scripts_of(write_config(tmp_path, run_dir='results/a"b'))


def test_hostile_values_reach_the_program_verbatim_and_run_nothing(tmp_path):
    """Run a generated script with bash: the pipeline command (a recorder here) gets each value as one argument,
    and the command substitutions, quotes and semicolons in the values execute nothing."""
    evil = "x'; touch PWNED; echo \"$(touch PWNED2)\" `touch PWNED3` $HOME\n"
    recorder = tmp_path / f"py {evil[:20].strip()}"
    recorder.write_text('#!/bin/bash\npython3 -c \'import json, sys; print(json.dumps(sys.argv[1:]))\' "$@" '
                        f'> {tmp_path}/argv.json\n')
    recorder.chmod(0o755)
    run_dir = str(tmp_path / "run $(touch PWNED4) 'q' ; `id`")
    path = write_config(tmp_path, name=evil, run_dir=run_dir, slurm={"python": str(recorder)})
    script = scripts_of(path)["train-ws2-cuda-bs32"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv == ["-m", "pipeline", "train", str(Path(run_dir) / "config.yaml"), "--configuration",
                    "ws2-cuda-bs32", "--launcher", "torchrun"]
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))
    assert "#SBATCH --job-name=x___touch_PWNED__echo" in script


def test_each_repeat_is_its_own_train_job_and_is_tracked_by_its_name(tmp_path):
    config = load_config(write_config(tmp_path, run_dir=str(tmp_path / "run"),
                                      train={"world_sizes": [1, 2], "repeats": 2}))
    scripts = experiment_scripts(config, tmp_path / "run" / "config.yaml", "/opt/venv/bin/python")
    train = [s for s in scripts if s.stage == "train"]
    assert [s.name for s in train] == ["train-ws1-cuda-bs32-r1", "train-ws1-cuda-bs32-r2", "train-ws2-cuda-bs32-r1",
                                       "train-ws2-cuda-bs32-r2"]
    assert "CONFIGURATION=ws2-cuda-bs32-r2\n" in train[3].text
    assert "#SBATCH --job-name=golden-train-ws2-cuda-bs32-r2\n" in train[3].text
    assert [TrainingRun.parse(s.configuration, config).repeat for s in train] == [1, 2, 1, 2]
    # The records `pipeline submit` keeps: a repeat without metrics.json is named on its own in status and report.
    records = [JobRecord(s.stage, s.configuration, "local", "script", s.log, "FAILED", 1) for s in scripts]
    (tmp_path / "run" / "configs" / "ws1-cuda-bs32-r1").mkdir(parents=True)
    (tmp_path / "run" / "configs" / "ws1-cuda-bs32-r1" / "metrics.json").write_text("{}")
    jobs.save(tmp_path / "run", "local", records)
    assert [r["configuration"] for r in jobs.status_table(tmp_path / "run") if r["stage"] == "train"] == \
        ["ws1-cuda-bs32-r1", "ws1-cuda-bs32-r2", "ws2-cuda-bs32-r1", "ws2-cuda-bs32-r2"]
    assert [f["name"] for f in jobs.unfinished_configurations(tmp_path / "run")] == \
        ["ws1-cuda-bs32-r2", "ws2-cuda-bs32-r1", "ws2-cuda-bs32-r2"]
