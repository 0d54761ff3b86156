"""Preprocessing on a file system that fills up mid-run (a small tmpfs, `tests.full_disk`): the run stops with an
error naming the shard and saying the disk is full, no shard is marked complete that is not, no temporary file is
left, and the same command, once space is freed, finishes with the outputs of a run that never ran out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline.config import load_config
from pipeline.preprocess import shards
from tests.conftest import tiny_experiment
from tests.full_disk import small_filesystem
from tests.preprocess.compare import assert_same_outputs, serial_run

SETTINGS = {"files_per_task": 2, "workers": 1}
"""Ten tasks: enough that the disk fills after some are complete."""


def pipeline(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, check=False,
                          timeout=900)


def test_a_full_disk_stops_preprocessing_naming_the_shard_and_the_same_command_resumes(tmp_path, speech_dir):
    reference = serial_run(tmp_path / "reference", speech_dir, **SETTINGS)
    written = sum(p.stat().st_size for p in reference.rglob("*") if p.is_file())
    yaml = tiny_experiment(tmp_path / "full", speech_dir, preprocess=SETTINGS)
    config = load_config(yaml)
    run = Path(config.run_dir)
    with small_filesystem(run, 4 * written) as disk:
        assert pipeline("data", "manifest", str(yaml)).returncode == 0
        manifest = (run / "manifest.csv").read_bytes()
        disk.fill(leave=written // 3)  # room for about a third of the outputs
        failed = pipeline("preprocess", str(yaml))
        said = failed.stderr + failed.stdout
        assert failed.returncode != 0, said[-3000:]
        assert "not written: no space left on the file system (ENOSPC)" in said, said[-3000:]
        assert f"{run / 'features'}/shard-" in said, said[-3000:]
        features = run / "features"
        complete = [k for k in range(10) if shards.is_complete(features, k)]
        assert 0 < len(complete) < 10, complete
        assert [p.name for p in features.iterdir() if p.name.startswith(".")] == []  # no temporary shard folder
        assert not list((run / "images").rglob("*.tmp")) and not (features / "index.csv").exists()
        disk.unfill()
        resumed = pipeline("preprocess", str(yaml))
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"{len(complete)} already complete" in resumed.stderr
        assert_same_outputs(reference, run)
        assert (run / "manifest.csv").read_bytes() == manifest
