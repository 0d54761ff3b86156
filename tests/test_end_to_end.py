"""`pipeline run` as a user runs it: a subprocess, real Dask workers, torchrun (and horovodrun) with 2 gloo ranks."""

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_experiment


def pipeline(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, check=False,
                          timeout=600)


def test_run_tiny_experiment_at_world_size_1_and_2(tmp_path, speech_dir):
    config = tiny_experiment(tmp_path, speech_dir, train={"world_sizes": [1, 2]})
    result = pipeline("run", str(config), "--set", "train.epochs=2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "train: ws2-cpu-bs8 runs on cpu: train.device cpu" in result.stdout
    run = tmp_path / "run"
    for name in ("ws1-cpu-bs8", "ws2-cpu-bs8"):
        metrics = json.loads((run / "configs" / name / "metrics.json").read_text())
        assert metrics["epochs"] == 2 and len(metrics["history"]) == 2
        assert metrics["samples_per_second"] > 0
        assert 0 <= metrics["test_accuracy"] <= 1
        assert metrics["versions"]["torch"].startswith("2.11")
        assert metrics["peak_memory_bytes"] > 50 * 2**20
        assert metrics["device_reason"] == "train.device cpu"  # tiny_experiment pins the CPU on any machine
        with open(run / "configs" / name / "steps.csv", newline="") as f:
            steps = [r for r in csv.DictReader(f) if r["epoch"] == "2"]  # epoch 1 is warm-up, left out of means
        assert len(steps) == metrics["steps_per_epoch"]
        for phase in ("data_s", "forward_backward_s", "optimizer_s", "allreduce_s", "step_s"):
            recomputed = sum(float(r[phase]) for r in steps) / len(steps)
            assert abs(metrics[f"mean_{phase}"] - recomputed) < 1e-9, phase
        assert metrics["mean_allreduce_s"] > 0
    with open(run / "scaling.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["world_size"] for r in rows] == ["1", "2"]
    assert float(rows[0]["speedup"]) == 1.0
    report = (run / "report.md").read_text()
    assert "ws2-cpu-bs8" in report and "](speedup_weak.png)" in report and "](step_split.png)" in report
    assert (run / "speedup_weak.png").read_bytes()[:4] == b"\x89PNG"
    # The train stage measured the all-reduce at 2 ranks, and the projection says it used that link.
    assert json.loads((run / "allreduce.json").read_text())["fits"][0]["world_size"] == 2
    assert "Link: measured (gloo on cpu, `allreduce.json`" in report and "## Allocation estimate" in report
    assert "projection model (a ring all-reduce over the link `pipeline bench --allreduce` measured" in report
    assert "train.epochs" not in (run / "config.yaml").read_text() and "epochs: 2" in (run / "config.yaml").read_text()

    rerun = pipeline("run", str(config), "--set", "train.epochs=2")
    assert rerun.returncode == 0, rerun.stderr
    assert "already has metrics.json, skipped" in rerun.stdout


def test_weak_and_strong_scaling_from_one_real_sweep(tmp_path, speech_dir):
    """train.scaling both trains the union once (ws1-bs8 is the baseline of both curves) and reports each study."""
    config = tiny_experiment(tmp_path, speech_dir, train={"world_sizes": [1, 2], "scaling": "both", "epochs": 2,
                                                          "synthetic_steps": 3})
    result = pipeline("run", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "configs").iterdir()) == ["ws1-cpu-bs8", "ws2-cpu-bs4", "ws2-cpu-bs8"]
    with open(run / "scaling.csv", newline="") as f:
        rows = [(r["scaling"], r["name"], r["baseline"], r["global_batch_size"]) for r in csv.DictReader(f)]
    assert rows == [("weak", "ws1-cpu-bs8", "ws1-cpu-bs8", "8"), ("weak", "ws2-cpu-bs8", "ws1-cpu-bs8", "16"),
                    ("strong", "ws1-cpu-bs8", "ws1-cpu-bs8", "8"), ("strong", "ws2-cpu-bs4", "ws1-cpu-bs8", "8")]
    report = (run / "report.md").read_text()
    assert "## Weak scaling" in report and "## Strong scaling" in report and "## Allocation estimate" in report
    assert "Efficiency threshold `report.min_efficiency` 75%" in report
    assert (run / "speedup_strong.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((run / "configs" / "ws2-cpu-bs4" / "metrics.json").read_text())
    assert metrics["global_batch_size"] == 8 and metrics["synthetic_samples_per_second"] > 0


def test_bad_config_exits_with_the_key_and_file(tmp_path, speech_dir):
    config = tiny_experiment(tmp_path, speech_dir, train={"batch": 8})
    result = pipeline("run", str(config))
    assert result.returncode == 2
    assert f"{config}: unknown key 'train.batch'" in result.stderr


def test_every_command_has_help():
    for command in (["data"], ["data", "demo"], ["data", "manifest"], ["preprocess"], ["train"], ["report"],
                    ["run"], ["submit"], ["status"], ["cancel"], ["config"]):
        result = pipeline(*command, "--help")
        assert result.returncode == 0 and "usage: pipeline" in result.stdout, command


def test_report_of_a_folder_without_metrics_is_a_clear_error(tmp_path):
    result = pipeline("report", str(tmp_path))
    assert result.returncode == 2 and "no configs/*/metrics.json" in result.stderr


def test_sbatch_script_runs_the_experiment_as_a_plain_script(tmp_path, speech_dir):
    """Outside SLURM the script is plain bash; under sbatch it gets SLURM_CPUS_PER_TASK and SLURM_SUBMIT_DIR."""
    config = tiny_experiment(tmp_path, speech_dir, train={"world_sizes": [1], "epochs": 1})
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PIPELINE": str(Path(sys.executable).parent / "pipeline"), "SLURM_CPUS_PER_TASK": "1",
           "SLURM_SUBMIT_DIR": str(root)}
    result = subprocess.run(["bash", str(root / "slurm" / "run.sbatch"), str(config), "--set", "train.batch_size=4"],
                            capture_output=True, text=True, env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 Dask workers" in result.stdout
    assert "workers: 1" in (tmp_path / "run" / "config.yaml").read_text()
    assert (tmp_path / "run" / "configs" / "ws1-cpu-bs4" / "metrics.json").exists()


def test_stages_out_of_order_say_what_to_run_first(tmp_path, speech_dir):
    config = tiny_experiment(tmp_path, speech_dir)
    result = pipeline("preprocess", str(config))
    assert result.returncode == 2 and "run `pipeline data manifest CONFIG` first" in result.stderr
    result = pipeline("train", str(config))
    assert result.returncode == 2 and "run `pipeline preprocess CONFIG` first" in result.stderr


@pytest.mark.skipif(importlib.util.find_spec("horovod") is None,
                    reason="horovod is not built here (./setup.sh --with-horovod builds it)")
def test_one_run_with_both_backends_reports_both_curves_side_by_side(tmp_path, speech_dir):
    config = tiny_experiment(tmp_path, speech_dir, train={"world_sizes": [1, 2], "backends": ["ddp", "horovod"],
                                                          "epochs": 2})
    result = pipeline("run", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "configs").iterdir()) == [
        "ws1-cpu-bs8", "ws1-cpu-bs8-horovod", "ws2-cpu-bs8", "ws2-cpu-bs8-horovod"]
    with open(run / "scaling.csv", newline="") as f:
        rows = [(r["backend"], r["name"], r["baseline"]) for r in csv.DictReader(f)]
    assert rows == [("ddp", "ws1-cpu-bs8", "ws1-cpu-bs8"), ("ddp", "ws2-cpu-bs8", "ws1-cpu-bs8"),
                    ("horovod", "ws1-cpu-bs8-horovod", "ws1-cpu-bs8-horovod"),
                    ("horovod", "ws2-cpu-bs8-horovod", "ws1-cpu-bs8-horovod")]
    report = (run / "report.md").read_text()
    assert "## DDP and Horovod" in report and "weak, cpu, 8/rank, horovod" in report
    assert "At 2 CPU ranks, 8/rank, Horovod (ws2-cpu-bs8-horovod) runs" in report
    assert (run / "speedup_weak.png").read_bytes()[:4] == b"\x89PNG"
