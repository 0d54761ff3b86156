"""RUN_DIR/config.yaml (`pipeline.run_config`): a command refused by a live lock leaves it as it was, the same
settings are not rewritten, and a gone holder does not block it. Real holder processes (tests/test_run_lock.py's)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import config_text, load_config
from pipeline.layout import RunLayout
from pipeline.run_config import save_run_config
from pipeline.run_lock import RunLockHeld, lock_path
from tests.test_run_lock import ROOT, hold, write_lock


def experiment(tmp_path: Path, n_mels: int = 64):
    path = tmp_path / "exp.yaml"
    path.write_text(f"run_dir: {tmp_path / 'run'}\npreprocess:\n  n_mels: {n_mels}\n")
    return path, load_config(path)


@pytest.mark.parametrize("lock", ["preprocess", "train"])
def test_other_settings_are_refused_while_another_process_holds_a_lock_of_the_folder(tmp_path, lock):
    _, first = experiment(tmp_path)
    saved = save_run_config(first)
    before = saved.read_text()
    layout = RunLayout(first.run_dir)
    folder = layout.root if lock == "preprocess" else layout.training("ws1-cpu-bs4").folder
    holder = hold(lock_path(folder, lock), tmp_path, lock)
    try:
        assert save_run_config(first) == saved  # the same settings: nothing to refuse, nothing rewritten
        _, other = experiment(tmp_path, n_mels=32)
        with pytest.raises(RunLockHeld, match=rf"config.yaml: not rewritten with other settings while host "
                           rf"{socket.gethostname()}, pid {holder.pid}.* holds .*{lock}.lock"):
            save_run_config(other)
        assert saved.read_text() == before
    finally:
        holder.kill()
        holder.wait()
    save_run_config(other)  # the holder is gone: its lock no longer counts
    assert saved.read_text() == config_text(other) != before


def test_a_refused_command_leaves_config_yaml_as_the_running_one_wrote_it(tmp_path):
    """`pipeline data manifest --set ...` beside a running preprocessing: exit 2, naming the holder."""
    path, first = experiment(tmp_path)
    saved = save_run_config(first)
    before = saved.read_text()
    holder = hold(lock_path(RunLayout(first.run_dir).root, "preprocess"), tmp_path, "preprocess", "exp")
    try:
        refused = subprocess.run([sys.executable, "-m", "pipeline", "data", "manifest", str(path), "--set",
                                  "preprocess.n_mels=32"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert refused.returncode == 2, refused.stderr
    assert f"pid {holder.pid}" in refused.stderr and "not rewritten with other settings" in refused.stderr
    assert saved.read_text() == before


def test_a_stale_lock_does_not_block_the_config(tmp_path):
    _, first = experiment(tmp_path)
    save_run_config(first)
    write_lock(lock_path(RunLayout(first.run_dir).root, "preprocess"), stage="preprocess")  # its pid is dead
    _, other = experiment(tmp_path, n_mels=32)
    assert save_run_config(other).read_text() == config_text(other)
