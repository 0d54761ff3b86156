"""A full disk mid-run (a small tmpfs, `tests.full_disk`): the stage stops with an error naming the file and saying
the disk is full, the files it had written before are whole (the previous checkpoint loads, the previous report is
as it was), no temporary file is left, and the same command works once space is freed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.io import DiskFullError, atomic_write_text
from pipeline.train import checkpoint
from tests.full_disk import small_filesystem
from tests.train.conftest import experiment, features  # noqa: F401  (features: the fixture)

TABLES = ("scaling.csv", "scaling_repeats.csv", "scaling.json")
"""What `pipeline report` writes first, before its figures, report.md and report.html (which embeds the figures)."""


def pipeline(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, check=False,
                          timeout=600)


def temporary_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.tmp")]


def test_a_write_that_finds_the_disk_full_names_the_file_and_leaves_the_old_one(tmp_path):
    with small_filesystem(tmp_path / "disk", 64 * 1024) as disk:
        path = disk.path / "summary.json"
        atomic_write_text(path, "old\n")
        disk.fill()
        with pytest.raises(DiskFullError) as full:
            atomic_write_text(path, "new " * 10_000)
        assert str(full.value).startswith(f"{path}: not written: no space left on the file system (ENOSPC)")
        assert "run the same command again" in str(full.value) and full.value.errno == 28
        assert path.read_text() == "old\n" and not temporary_files(disk.path)
        disk.unfill()
        atomic_write_text(path, "new\n")
        assert path.read_text() == "new\n"


def test_a_full_disk_stops_training_at_a_checkpoint_and_the_same_command_resumes(tmp_path, features):  # noqa: F811
    probe = experiment(tmp_path / "probe", features, world_sizes=[1], epochs=1)
    assert pipeline("train", str(probe)).returncode == 0
    size = (tmp_path / "probe" / "run" / "configs" / "ws1-cpu-bs4" / "checkpoints" / "last.pt").stat().st_size
    config = experiment(tmp_path, features, world_sizes=[1], epochs=2, checkpoint_every_steps=1)
    folder = tmp_path / "run" / "configs" / "ws1-cpu-bs4"
    last = folder / "checkpoints" / "last.pt"
    # Room for one checkpoint, not for the next beside it: the write after the first optimizer step fails.
    with small_filesystem(folder / "checkpoints", size * 3 // 2) as disk:
        failed = pipeline("train", str(config))
        assert failed.returncode == 2, failed.stderr
        assert f"{last}: not written: no space left on the file system (ENOSPC)" in failed.stderr
        assert sorted(p.name for p in disk.path.iterdir()) == ["last.pt"]  # no temporary file
        assert checkpoint.read(last)["progress"]["optimizer_steps"] == 1  # the previous one, whole
        assert not (folder / "metrics.json").exists() and not (folder / "model.pt").exists()

        disk.resize(size * 4)
        resumed = pipeline("train", str(config))
        assert resumed.returncode == 0, resumed.stderr
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["resumed_from"] == {"epoch": 1, "batches_done": 1, "optimizer_steps": 1}
        assert metrics["epochs_run"] == 2 and sorted(p.name for p in disk.path.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("room", ["none", "tables only"])
def test_a_full_disk_stops_the_report_naming_the_file_and_a_rerun_writes_it(tmp_path, features, room):  # noqa: F811
    trained = experiment(tmp_path / "trained", features, world_sizes=[1], epochs=1)
    assert pipeline("train", str(trained)).returncode == 0
    with small_filesystem(tmp_path / "disk", 64 * 1024 * 1024) as disk:
        run = disk.path / "run"
        shutil.copytree(tmp_path / "trained" / "run", run)
        assert pipeline("report", str(run)).returncode == 0
        before = {name: (run / name).read_bytes() for name in ("report.md", "report.html")}
        # "tables only": room for the tables (each written beside its old copy), not for the first figure
        disk.fill(leave=0 if room == "none" else max(_pages(run / name) for name in TABLES) + 4096)
        failed = pipeline("report", str(run))
        assert failed.returncode == 2, failed.stderr
        message = failed.stderr.strip().splitlines()[-1]
        assert message.startswith(f"pipeline report: error: {run}/") and \
            "not written: no space left on the file system (ENOSPC)" in message, failed.stderr
        if room == "none":
            assert message.startswith(f"pipeline report: error: {run}/scaling.csv: "), message
        else:
            assert message.split(": ")[2].endswith((".png", ".svg")), message
        assert {name: (run / name).read_bytes() for name in before} == before  # the previous report, whole
        assert json.loads((run / "scaling.json").read_text()) and not temporary_files(run)  # old or new, whole

        disk.unfill()
        done = pipeline("report", str(run))
        assert done.returncode == 0, done.stderr
        assert (run / "report.md").read_text().startswith("#") and not temporary_files(run)


def _pages(path: Path) -> int:
    return -(-path.stat().st_size // 4096) * 4096
