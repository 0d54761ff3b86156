"""The training engine through `pipeline train`, as a user runs it: torchrun, real gloo ranks, real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.cli import EXIT_INTERRUPTED
from pipeline.config import TrainConfig
from pipeline.train import checkpoint
from pipeline.train.checkpoint import Progress
from pipeline.train.trainer import _track_early_stopping
from tests.train.conftest import experiment


def pipeline(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, check=False,
                          timeout=600)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return checkpoint.read(folder / "model.pt")["model"]


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_ranks_stay_identical_and_match_one_rank_with_the_doubled_batch(tmp_path, features):
    # No BatchNorm (each rank would normalise with its own batch) and no dropout: then 2 ranks x batch 8 average
    # exactly the gradients of 1 rank x batch 16 over the same samples, and so does 1 rank x 8 x 2 accumulations.
    config = experiment(tmp_path, features, model="lstm", dropout=0.0)
    runs = {"ws2-cpu-bs8": ["train.world_sizes=[2]", "train.batch_size=8"],
            "ws1-cpu-bs16": ["train.world_sizes=[1]", "train.batch_size=16"],
            "ws1-cpu-bs8": ["train.world_sizes=[1]", "train.batch_size=8", "train.grad_accumulation=2"]}
    for overrides in runs.values():
        result = pipeline("train", str(config), *[a for o in overrides for a in ("--set", o)])
        assert result.returncode == 0, result.stdout + result.stderr
    configs = tmp_path / "run" / "configs"
    assert metrics(configs / "ws2-cpu-bs8")["rank_max_param_difference"] == 0.0
    assert metrics(configs / "ws1-cpu-bs8")["global_batch_size"] == 16
    reference = weights(configs / "ws1-cpu-bs16")
    for name in ("ws2-cpu-bs8", "ws1-cpu-bs8"):
        other = weights(configs / name)
        worst = max((other[k] - reference[k]).abs().max().item() for k in reference)
        assert worst < 1e-4, (name, worst)
        losses = [h["train_loss"] for h in metrics(configs / name)["history"]]
        expected = [h["train_loss"] for h in metrics(configs / "ws1-cpu-bs16")["history"]]
        assert losses == pytest.approx(expected, rel=1e-4)


def start_training(config: Path, *overrides: str) -> tuple[subprocess.Popen, Path]:
    args = [a for o in overrides for a in ("--set", o)]
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "train", str(config), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, Path(yaml.safe_load(config.read_text())["run_dir"]) / "configs" / "ws2-cpu-bs4"


def wait_for(predicate, what: str, timeout: float = 120) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def rank0_pid(folder: Path) -> int | None:
    log = folder / "train.log"
    match = re.search(r"rank 0 \(pid (\d+)\)", log.read_text()) if log.exists() else None
    return int(match.group(1)) if match else None


def test_a_signal_mid_epoch_checkpoints_exits_cleanly_and_resumes_to_the_same_weights(tmp_path, features):
    uninterrupted = experiment(tmp_path / "a", features)
    assert pipeline("train", str(uninterrupted)).returncode == 0
    config = experiment(tmp_path / "b", features)
    process, folder = start_training(config)
    # Only rank 0 gets the signal, as may happen on a cluster: the ranks agree to stop through an all-reduce.
    os.kill(wait_for(lambda: rank0_pid(folder), "rank 0 to start"), signal.SIGUSR1)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert "stopped by SIGUSR1 in epoch 1" in stderr and "Run the same command again to resume" in stderr
    stopped = json.loads((folder / "interrupted.json").read_text())
    assert stopped["requeue"] is None  # not inside a SLURM job
    assert "Traceback" not in (folder / "train.log").read_text()
    assert not (folder / "metrics.json").exists()

    resumed = pipeline("train", str(config))
    assert resumed.returncode == 0, resumed.stderr
    assert metrics(folder)["resumed_from"] == {"epoch": 1, "batches_done": stopped["batches_done"],
                                                "optimizer_steps": stopped["optimizer_steps"]}
    assert 1 <= stopped["batches_done"] < metrics(folder)["steps_per_epoch"]  # it stopped mid-epoch
    assert not (folder / "interrupted.json").exists()
    reference = weights(tmp_path / "a" / "run" / "configs" / "ws2-cpu-bs4")
    final = weights(folder)
    assert all(torch.equal(final[k], reference[k]) for k in reference)


def test_a_killed_rank_is_restarted_from_the_last_checkpoint(tmp_path, features):
    uninterrupted = experiment(tmp_path / "a", features)
    assert pipeline("train", str(uninterrupted)).returncode == 0
    config = experiment(tmp_path / "b", features, max_restarts=1, checkpoint_every_steps=1)
    process, folder = start_training(config)
    pid = wait_for(lambda: rank0_pid(folder), "rank 0 to start")
    wait_for(lambda: (folder / "checkpoints" / "last.pt").exists(), "the first checkpoint")
    os.kill(pid, signal.SIGKILL)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    result = metrics(folder)
    assert result["restarts"] == 1 and result["resumed_from"] is not None
    reference = weights(tmp_path / "a" / "run" / "configs" / "ws2-cpu-bs4")
    final = weights(folder)
    assert all(torch.equal(final[k], reference[k]) for k in reference)


def test_images_through_a_frozen_resnet50_with_warmup_and_linear_scaling(tmp_path, features):
    config = experiment(tmp_path, features, model="resnet50", input="images", freeze="backbone", epochs=1,
                        batch_size=8, lr_scaling="linear", warmup_epochs=0.5)
    result = pipeline("train", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    found = metrics(tmp_path / "run" / "configs" / "ws2-cpu-bs8")
    assert (found["model"], found["input"], found["init"]) == ("resnet50", "images", "from scratch (no "
                                                                                      "pretrained_weights)")
    assert found["lr_effective"] == pytest.approx(2e-3)
    assert found["warmup_steps"] == round(0.5 * found["steps_per_epoch"]) > 0
    assert set(found) >= {"test_balanced_accuracy", "test_macro_f1", "test_confusion"}
    folder = tmp_path / "run" / "configs" / "ws2-cpu-bs8"
    assert (folder / "confusion_test.png").stat().st_size > 0
    assert any((folder / "tensorboard").iterdir())


def test_horovod_without_its_build_is_a_clear_error_naming_the_build_command(tmp_path, features):
    # Where Horovod is built, a package of the same name first on the path makes it unimportable, as on a machine
    # without the build (the one stand-in here: that machine cannot be had in the same test run).
    hidden = tmp_path / "no-horovod" / "horovod"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('No module named horovod (hidden by the test)')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hidden.parent), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "pipeline", "train",
                             str(experiment(tmp_path, features, backends=["ddp", "horovod"]))],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 2
    assert "train.backend: 'horovod' is not importable" in result.stderr
    assert "./setup.sh --with-horovod" in result.stderr
    assert not (tmp_path / "run" / "configs").exists()  # refused before anything trained


def test_early_stopping_counts_epochs_without_improvement():
    config = TrainConfig(early_stopping_patience=2, early_stopping_metric="val_loss")
    progress = Progress()
    for loss in (1.0, 0.8, 0.9, 0.85):
        _track_early_stopping(progress, {"val_loss": loss}, config)
    assert progress.best == 0.8 and progress.stopped_early
    never = Progress()
    for accuracy in (0.5, 0.4, 0.3):
        _track_early_stopping(never, {"val_accuracy": accuracy}, TrainConfig())
    assert not never.stopped_early  # patience 0 switches early stopping off
