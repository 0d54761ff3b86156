"""The numbers in the report's table equal those recomputed from the raw per-step timings and epoch history.

One real training (1 rank, 3 epochs, so that "the epochs after the first" are two and a mean over them differs from
the last epoch alone), then the report; every timing column of scaling.csv is recomputed from steps.csv and
metrics.json's history the way a reader checking the report would.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load_config, save_config
from pipeline.preprocess.run import preprocess
from pipeline.report.report import write_report
from pipeline.stages import data_stage
from tests.conftest import tiny_experiment

EPOCHS = 3
BATCH = 8
PHASE_COLUMNS = {"step_s": "step_ms", "data_s": "data_ms", "forward_backward_s": "forward_backward_ms",
                 "optimizer_s": "optimizer_ms", "allreduce_s": "allreduce_ms"}
ROUNDING = 1e-6
"""scaling.csv rounds to 6 decimals."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, speech_dir: Path) -> Path:
    """A run folder with one configuration trained by `pipeline train` (torchrun, 1 gloo rank) and its report."""
    tmp = tmp_path_factory.mktemp("raw_timings")
    path = tiny_experiment(tmp, speech_dir, train={"world_sizes": [1], "epochs": EPOCHS, "batch_size": BATCH})
    config = load_config(path)
    save_config(config, Path(config.run_dir) / "config.yaml")
    data_stage(config)
    preprocess(config)
    result = subprocess.run([sys.executable, "-m", "pipeline", "train", str(path)], capture_output=True, text=True,
                            check=False, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    write_report(Path(config.run_dir))
    return Path(config.run_dir)


def scaling_row(run: Path, name: str) -> dict[str, float | str]:
    with open(run / "scaling.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["name"] == name)
    return {key: _number(value) for key, value in row.items()}


def test_step_columns_are_the_means_of_steps_csv_over_the_epochs_after_the_first(trained):
    folder = trained / "configs" / f"ws1-cpu-bs{BATCH}"
    metrics = json.loads((folder / "metrics.json").read_text())
    with open(folder / "steps.csv", newline="") as f:
        steps = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(f)]
    per_epoch = {e: [s for s in steps if s["epoch"] == e] for e in range(1, EPOCHS + 1)}
    assert [len(rows) for rows in per_epoch.values()] == [metrics["steps_per_epoch"]] * EPOCHS
    assert len(steps) == EPOCHS * metrics["steps_per_epoch"]
    steady = [s for s in steps if s["epoch"] > 1]

    row = scaling_row(trained, folder.name)
    for phase, column in PHASE_COLUMNS.items():
        recomputed_ms = 1000 * sum(s[phase] for s in steady) / len(steady)
        assert row[column] == pytest.approx(recomputed_ms, abs=ROUNDING), column
    # The phases split the step: data wait, forward+backward and optimizer add up to the step's wall time.
    for s in steps:
        assert s["data_s"] + s["forward_backward_s"] + s["optimizer_s"] <= s["step_s"] + 1e-9, s
    split = sum(s["data_s"] + s["forward_backward_s"] + s["optimizer_s"] for s in steady)
    assert split / sum(s["step_s"] for s in steady) > 0.99


def test_epoch_time_throughput_and_cost_are_recomputed_from_the_history(trained):
    folder = trained / "configs" / f"ws1-cpu-bs{BATCH}"
    metrics = json.loads((folder / "metrics.json").read_text())
    history = metrics["history"]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    steady = history[1:]
    with open(folder / "steps.csv", newline="") as f:
        steps = list(csv.DictReader(f))
    for h in history:
        # Each epoch trains every step of rank 0 with a full batch on each rank (the loader drops the last one) ...
        assert h["samples"] == metrics["steps_per_epoch"] * BATCH * metrics["world_size"]
        # ... and its wall time holds all of those steps.
        assert sum(float(s["step_s"]) for s in steps if int(s["epoch"]) == h["epoch"]) < h["epoch_time_s"]

    row = scaling_row(trained, folder.name)
    assert row["epoch_time_s"] == pytest.approx(sum(h["epoch_time_s"] for h in steady) / len(steady), abs=ROUNDING)
    samples_per_second = sum(h["samples"] for h in steady) / sum(h["epoch_time_s"] for h in steady)
    assert row["samples_per_second"] == pytest.approx(samples_per_second, abs=ROUNDING)
    assert row["train_wall_s"] == pytest.approx(metrics["train_wall_s"], abs=ROUNDING)
    assert metrics["train_wall_s"] > sum(h["epoch_time_s"] for h in history)
    assert row["device_hours"] == pytest.approx(metrics["train_wall_s"] * row["world_size"] / 3600, abs=ROUNDING)
    assert row["world_size"] == 1 and row["speedup"] == 1.0


def _number(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value
