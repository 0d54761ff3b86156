"""A run folder reuses a configuration's outputs only if they were made the way the config asks now, and a run
folder that moved still trains, resumes, evaluates and reports."""

from __future__ import annotations

import json
import shutil

from tests.train.conftest import experiment
from tests.train.test_engine import metrics, pipeline


def test_outputs_of_other_settings_are_refused_by_name_and_force_retrains(tmp_path, features):
    config = experiment(tmp_path, features, world_sizes=[1], epochs=1)
    first = pipeline("train", str(config))
    assert first.returncode == 0, first.stdout + first.stderr
    folder = tmp_path / "run" / "configs" / "ws1-cpu-bs4"
    made = json.loads((folder / "fingerprint.json").read_text())
    assert made["settings"]["lr"] == 0.001 and made["settings"]["batch_size"] == 4 and made["code"]["source_sha256"]

    again = pipeline("train", str(config))
    assert again.returncode == 0 and "ws1-cpu-bs4 already has metrics.json, skipped" in again.stdout

    changed = pipeline("train", str(config), "--set", "train.lr=0.01")
    assert changed.returncode == 2
    assert "settings.lr: 0.001 -> 0.01" in changed.stderr and "--force" in changed.stderr, changed.stderr
    assert metrics(folder)["lr"] == 0.001  # nothing was touched

    forced = pipeline("train", str(config), "--set", "train.lr=0.01", "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert metrics(folder)["lr"] == 0.01
    assert json.loads((folder / "fingerprint.json").read_text())["settings"]["lr"] == 0.01


def test_outputs_without_a_fingerprint_are_not_reused(tmp_path, features):
    config = experiment(tmp_path, features, world_sizes=[1], epochs=1)
    assert pipeline("train", str(config)).returncode == 0
    folder = tmp_path / "run" / "configs" / "ws1-cpu-bs4"
    (folder / "fingerprint.json").unlink()  # as a folder made before fingerprints existed
    result = pipeline("train", str(config))
    assert result.returncode == 2 and "carry no fingerprint" in result.stderr, result.stderr


def test_a_moved_run_folder_trains_resumes_evaluates_and_reports_where_it_is(tmp_path, features):
    config = experiment(tmp_path, features, world_sizes=[1], epochs=2)
    assert pipeline("train", str(config)).returncode == 0
    moved = tmp_path / "elsewhere" / "moved-run"
    moved.parent.mkdir()
    shutil.move(tmp_path / "run", moved)
    folder = moved / "configs" / "ws1-cpu-bs4"

    skipped = pipeline("train", str(moved))  # the run folder in place of the config
    assert skipped.returncode == 0 and "already has metrics.json, skipped" in skipped.stdout, skipped.stderr
    (folder / "metrics.json").unlink()  # its checkpoint after the last epoch remains: resume from it
    resumed = pipeline("train", str(moved))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert metrics(folder)["resumed_from"]["epoch"] == 3 and metrics(folder)["epochs_run"] == 2

    evaluated = pipeline("evaluate", str(moved))
    assert evaluated.returncode == 0 and (folder / "evaluation_test.json").is_file(), evaluated.stderr
    reported = pipeline("report", str(moved))
    assert reported.returncode == 0 and "ws1-cpu-bs4" in (moved / "report.md").read_text(), reported.stderr
