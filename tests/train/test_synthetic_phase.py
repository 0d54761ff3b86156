"""train.synthetic_steps through `pipeline train`: real gloo ranks time steps on data made on the device, after
training, and change nothing that training produced."""

from __future__ import annotations

import csv

import pytest
import torch

from pipeline.config import ConfigError, load_config
from pipeline.records import TrainingMetrics
from pipeline.train import checkpoint
from tests.conftest import tiny_experiment
from tests.train.conftest import experiment
from tests.train.test_engine import metrics, pipeline, weights

SYNTHETIC = ("synthetic_samples_per_second", "synthetic_step_s")


def test_the_phase_records_its_speed_and_leaves_the_trained_run_bit_identical(tmp_path, features):
    # grad_accumulation 2: each synthetic step is two micro-batches, like a training step
    with_phase = experiment(tmp_path / "a", features, world_sizes=[1, 2], grad_accumulation=2, synthetic_steps=4)
    without = experiment(tmp_path / "b", features, world_sizes=[2], grad_accumulation=2)
    for config in (with_phase, without):
        result = pipeline("train", str(config))
        assert result.returncode == 0, result.stdout + result.stderr
    measured, plain = tmp_path / "a" / "run" / "configs", tmp_path / "b" / "run" / "configs"

    for name in ("ws1-cpu-bs4", "ws2-cpu-bs4"):
        found = metrics(measured / name)
        assert found["synthetic_samples_per_second"] > 0 and found["synthetic_step_s"] > 0
        # samples/s x s/step = samples per optimizer step of all ranks
        assert found["synthetic_samples_per_second"] * found["synthetic_step_s"] == pytest.approx(
            found["global_batch_size"])
        assert TrainingMetrics.read(measured / name / "metrics.json").to_dict() == found
    reference = metrics(plain / "ws2-cpu-bs4")
    assert not set(SYNTHETIC) & set(reference)
    assert TrainingMetrics.read(plain / "ws2-cpu-bs4" / "metrics.json").synthetic_step_s is None

    folder, other = measured / "ws2-cpu-bs4", plain / "ws2-cpu-bs4"
    found = metrics(folder)
    for key in ("test_accuracy", "test_loss", "test_macro_f1", "test_confusion", "final_val_accuracy",
                "rank_max_param_difference"):
        assert found[key] == reference[key], key
    assert [h["train_loss"] for h in found["history"]] == [h["train_loss"] for h in reference["history"]]
    assert_same_tensors(weights(folder), weights(other))
    last, last_reference = (checkpoint.read(f / "checkpoints" / "last.pt") for f in (folder, other))
    assert_same_tensors(last["model"], last_reference["model"])
    assert last["progress"]["optimizer_steps"] == last_reference["progress"]["optimizer_steps"]
    assert [row["epoch"] for row in steps(folder)] == [row["epoch"] for row in steps(other)]


def assert_same_tensors(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert found.keys() == expected.keys()
    for key in expected:
        assert torch.equal(found[key], expected[key]), key


def steps(folder) -> list[dict]:
    with (folder / "steps.csv").open() as f:
        return list(csv.DictReader(f))


def test_a_negative_number_of_synthetic_steps_is_refused(tmp_path, speech_dir):
    config = tiny_experiment(tmp_path, speech_dir, train={"synthetic_steps": -1})
    with pytest.raises(ConfigError, match=r"train\.synthetic_steps"):
        load_config(config)
