"""train.repeats through `pipeline train`: one folder and one seed per repeat, and the facts the report needs."""

from __future__ import annotations

import json

import torch

from pipeline.records import TrainingMetrics
from pipeline.report.aggregate import aggregate
from pipeline.report.table import add_derived, collect
from pipeline.train import checkpoint
from tests.train.conftest import experiment
from tests.train.test_engine import pipeline

BATCHNORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def test_two_repeats_train_in_their_own_folders_with_their_own_seeds(tmp_path, features):
    config = experiment(tmp_path, features, world_sizes=[1], epochs=1, repeats=2)  # train.seed is 3
    result = pipeline("train", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    configs = tmp_path / "run" / "configs"
    assert sorted(p.name for p in configs.iterdir()) == ["ws1-cpu-bs4-r1", "ws1-cpu-bs4-r2"]
    found = {k: json.loads((configs / f"ws1-cpu-bs4-r{k}" / "metrics.json").read_text()) for k in (1, 2)}
    assert [(found[k]["repeat"], found[k]["seed"]) for k in (1, 2)] == [(1, 3), (2, 4)]
    weights = {k: checkpoint.read(configs / f"ws1-cpu-bs4-r{k}" / "model.pt")["model"] for k in (1, 2)}
    assert any(not torch.equal(weights[1][key], weights[2][key]) for key in weights[1])  # another initialisation
    parameters = sum(t.numel() for key, t in weights[1].items() if not key.endswith(BATCHNORM_BUFFERS))
    for k, metrics in found.items():
        # metrics.json is exactly a TrainingMetrics record: no key missing, none unknown
        assert TrainingMetrics.read(configs / f"ws1-cpu-bs4-r{k}" / "metrics.json").to_dict() == metrics
        assert metrics["precision"] == "fp32"
        assert metrics["parameters"] == parameters > 0
        assert metrics["gradient_bytes"] == 4 * metrics["parameters"]

    runs, _ = collect(tmp_path / "run")
    (row,) = aggregate(runs)
    add_derived([row])
    assert (row["name"], row["repeats"], row["seeds"]) == ("ws1-cpu-bs4", 2, [3, 4])
    assert row["samples_per_second_ci95"] > 0 and row["parameters"] == parameters
