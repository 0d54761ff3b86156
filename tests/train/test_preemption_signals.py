"""The warning signal is `slurm.signal` (USR1 or USR2): real gloo ranks under `pipeline train` stop on either, and
only the configured one requeues the (stand-in) SLURM job; without scontrol the rank says so instead."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.cli import EXIT_INTERRUPTED
from pipeline.train.preemption import StopFlag, requeue_slurm_job
from tests.train.conftest import experiment
from tests.train.test_engine import rank0_pid, wait_for

CASES = {  # configured signal, requeue_by, signal sent -> scontrol calls, note in interrupted.json
    "usr1": ("USR1", "rank", signal.SIGUSR1, ["requeue 4242"], "requeued SLURM job 4242"),
    "usr2": ("USR2", "rank", signal.SIGUSR2, ["requeue 4242"], "requeued SLURM job 4242"),
    "usr2-not-configured": ("USR1", "rank", signal.SIGUSR2, [], None),
    "usr2-by-script": ("USR2", "script", signal.SIGUSR2, [], "left to the batch script"),
}


@pytest.mark.parametrize("case", CASES)
def test_the_configured_signal_checkpoints_and_requeues(tmp_path, features, case):
    configured, requeue_by, sent, calls, note = CASES[case]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {tmp_path}/scontrol.txt\n')
    (bin_dir / "scontrol").chmod(0o755)
    config = experiment(tmp_path, features)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}
    overrides = ["--set", f"slurm.signal={configured}", "--set", f"slurm.requeue_by={requeue_by}"]
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "train", str(config), *overrides], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    folder = Path(yaml.safe_load(config.read_text())["run_dir"]) / "configs" / "ws2-cpu-bs4"
    os.kill(wait_for(lambda: rank0_pid(folder), "rank 0 to start"), sent)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == EXIT_INTERRUPTED, stderr
    stopped = json.loads((folder / "interrupted.json").read_text())
    assert stopped["signal"] == signal.Signals(sent).name
    assert (stopped["requeue"] is None) if note is None else (note in stopped["requeue"])
    recorded = tmp_path / "scontrol.txt"
    assert (recorded.read_text().splitlines() if recorded.exists() else []) == calls


def test_the_flag_requeues_on_the_configured_signal_only():
    stop = StopFlag()
    assert stop.requeues(signal.SIGUSR1) and not stop.requeues(signal.SIGUSR2)
    stop.use_config("USR2")
    assert stop.requeues(signal.SIGUSR2) and not stop.requeues(signal.SIGUSR1)
    assert not stop.requeues(signal.SIGTERM) and not stop.requeues(None)


def test_without_scontrol_the_rank_says_who_must_requeue(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("PATH", str(tmp_path))  # a container without SLURM's commands
    note = requeue_slurm_job()
    assert note is not None and "scontrol is not on PATH" in note and "slurm.requeue_by: script" in note
