"""RUN_DIR/config.yaml: the one copy of the experiment that every stage, rank and SLURM job of a run folder reads.

Each command writes it before its stage, with its overrides applied. While another process holds a lock of the
folder (its preprocessing, or a configuration's training), rewriting it with other settings would change what that
process's ranks and jobs read next, and a second command its stage lock then refuses would already have changed the
folder. So other settings are refused while a lock is held, naming the holder; the same settings are not rewritten.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pipeline.config import ExperimentConfig, config_text
from pipeline.io import atomic_write_text
from pipeline.layout import RunLayout
from pipeline.run_lock import Holder, RunLockHeld, judge, lock_path, read_holder


def save_run_config(config: ExperimentConfig) -> Path:
    """Write RUN_DIR/config.yaml unless it already says the same; its path. Raises `RunLockHeld` when it says
    something else and another live process holds a lock of the folder."""
    layout = RunLayout(config.run_dir)
    path, text = layout.config, config_text(config)
    if path.exists():
        if path.read_text() == text:
            return path
        _refuse_while_locked(layout, path)
    atomic_write_text(path, text)
    return path


def folder_locks(layout: RunLayout) -> list[Path]:
    """Every lock a run folder can hold: its preprocessing's and each configuration's training lock."""
    return [lock_path(layout.root, "preprocess"), *(lock_path(t.folder, "train") for t in layout.trainings())]


def _refuse_while_locked(layout: RunLayout, path: Path) -> None:
    me = Holder.of_this_process("config", "")
    for lock in folder_locks(layout):
        holder = read_holder(lock)
        if holder is None or (holder.host == socket.gethostname() and holder.pid == os.getpid()):
            continue
        verdict = judge(holder, me)
        if verdict.state != "gone":
            raise RunLockHeld(
                f"{path}: not rewritten with other settings while {holder.describe()} holds {lock} "
                f"({verdict.why}): its stages and ranks read this file. Run the same command when it has finished, "
                "with the same settings, or with another run_dir.")
