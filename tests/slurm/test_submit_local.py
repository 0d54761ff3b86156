"""`pipeline submit` without SLURM: the same scripts run here in order; `--dry-run` writes and prints them only."""

from __future__ import annotations

import json

from tests.conftest import tiny_experiment
from tests.slurm.test_local_cluster import pipeline


def test_dry_run_prints_every_script_and_submits_nothing(tmp_path, speech_dir):
    config = tiny_experiment(tmp_path, speech_dir, train={"world_sizes": [1, 2], "batch_sizes": [4, 8]})
    result = pipeline("submit", str(config), "--dry-run")
    assert result.returncode == 0, result.stderr
    names = ["preprocess", "train-ws1-cpu-bs4", "train-ws1-cpu-bs8", "train-ws2-cpu-bs4", "train-ws2-cpu-bs8",
             "report"]
    for name in names:
        assert f"# ==> {tmp_path / 'run' / 'slurm' / 'scripts' / name}.sbatch <==" in result.stdout
    assert result.stdout.count("#!/bin/bash") == len(names)
    assert not (tmp_path / "run" / "slurm" / "jobs.json").exists()


def test_without_slurm_the_scripts_run_here_in_order(tmp_path, speech_dir):
    config = tiny_experiment(tmp_path, speech_dir, train={"world_sizes": [1]})
    result = pipeline("submit", str(config), "--local")
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / "run"
    recorded = json.loads((run / "slurm" / "jobs.json").read_text())
    assert recorded["executor"] == "local"
    assert [(j["stage"], j["state"]) for j in recorded["jobs"]] == [
        ("preprocess", "COMPLETED"), ("train", "COMPLETED"), ("report", "COMPLETED")]
    assert "| ws1-cpu-bs8 |" in (run / "report.md").read_text()
    assert "via torchrun" in (run / "slurm" / "logs" / "train-ws1-cpu-bs8-local.out").read_text()
    status = pipeline("status", str(run))
    assert status.stdout.count("COMPLETED") == 3, status.stdout
    cancel = pipeline("cancel", str(run))
    assert cancel.returncode == 2 and "ran locally, there is nothing to cancel" in cancel.stderr


def test_a_failed_preprocess_stops_training_and_says_so(tmp_path, speech_dir):
    config = tiny_experiment(tmp_path, speech_dir, data={"root": str(tmp_path / "missing")})
    result = pipeline("submit", str(config), "--local")
    assert result.returncode == 2
    assert "3 of 3 local jobs did not complete: preprocess (FAILED), ws2-cpu-bs8 (NOT_RUN), report (FAILED)" \
        in result.stderr
    log = (tmp_path / "run" / "slurm" / "logs" / "preprocess-local.out").read_text()
    assert str(tmp_path / "missing") in log
