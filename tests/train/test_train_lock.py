"""One writer per configuration through `pipeline train`, as a user meets it: a second `pipeline train` while the first
runs is refused naming it, a lock left by a dead process is recovered, and the lock goes when training ends, also
when a SIGTERM to `pipeline train` stops it (the ranks checkpoint first)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from pipeline.cli import EXIT_INTERRUPTED
from pipeline.run_lock import lock_path
from tests.train.conftest import experiment
from tests.train.test_engine import pipeline, rank0_pid, start_training, wait_for


def test_a_second_pipeline_train_is_refused_while_the_first_runs_and_the_lock_goes_with_it(tmp_path, features):
    config = experiment(tmp_path, features)
    first, folder = start_training(config)
    lock = lock_path(folder, "train")
    wait_for(lambda: rank0_pid(folder), "rank 0 to start")
    second = pipeline("train", str(config))
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out + err
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"{lock}: train of ws2-cpu-bs4 is locked by host {socket.gethostname()}, pid {first.pid}, since " \
        in second.stderr
    assert f"pid {first.pid} is running on this host" in second.stderr and f"kill {first.pid}" in second.stderr
    assert (folder / "train.log").read_text().count("--- ws2-cpu-bs4, attempt") == 1  # the second started nothing
    assert (folder / "metrics.json").is_file() and not lock.exists()


def test_a_lock_left_by_a_dead_process_is_taken_over_and_the_run_proceeds(tmp_path, features):
    config = experiment(tmp_path, features, world_sizes=[1], epochs=1)
    folder = tmp_path / "run" / "configs" / "ws1-cpu-bs4"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    folder.mkdir(parents=True)
    lock = lock_path(folder, "train")
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "stage": "train",
                                "configuration": "ws1-cpu-bs4", "since": "2025-01-01T00:00:00+00:00"}))
    result = pipeline("train", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{lock}: took over the stale lock of host {socket.gethostname()}, pid {gone.pid}, since " \
           f"2025-01-01T00:00:00+00:00: pid {gone.pid} has exited" in result.stderr
    assert (folder / "metrics.json").is_file() and not lock.exists()


def test_sigterm_to_pipeline_train_checkpoints_the_ranks_and_releases_the_lock(tmp_path, features):
    """scancel (or kill) reaching `pipeline train` itself: it passes the signal to torchrun, whose ranks checkpoint,
    and releases the lock only after them, exiting 75 like a signalled rank. Before, it died at once and left the
    ranks running without it."""
    config = experiment(tmp_path, features, epochs=20)
    process, folder = start_training(config)
    wait_for(lambda: rank0_pid(folder), "rank 0 to start")
    wait_for(lambda: "epoch 1/20" in (folder / "train.log").read_text(), "the first epoch", timeout=120)
    os.kill(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert json.loads((folder / "interrupted.json").read_text())["signal"] == "SIGTERM"
    assert "Run the same command again to resume" in stderr
    assert (folder / "checkpoints" / "last.pt").is_file() and not lock_path(folder, "train").exists()
    assert not _workers_of(folder)


def _workers_of(folder: Path) -> list[int]:
    """Pids of worker processes of `folder` still running (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"pipeline.train.worker" in cmdline and str(folder).encode() in cmdline:
            found.append(int(entry.name))
    return found
