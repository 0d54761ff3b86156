"""train.backend horovod through `pipeline train`, as a user runs it: horovodrun, real gloo ranks, real signals.

The equivalences DDP is held to hold for Horovod too: its ranks stay identical, 2 ranks x B train the weights of
1 rank x 2B (and of DDP's 2 ranks x B), and a signal mid-epoch followed by --resume ends bit-identical to an
uninterrupted run. Skipped where Horovod is not built (`./setup.sh --with-horovod`; CI builds it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.cli import EXIT_INTERRUPTED
from tests.train.conftest import experiment
from tests.train.test_engine import metrics, pipeline, rank0_pid, wait_for, weights

pytestmark = pytest.mark.skipif(importlib.util.find_spec("horovod") is None,
                                reason="horovod is not built here (./setup.sh --with-horovod builds it)")


def train(config: Path, *overrides: str) -> None:
    result = pipeline("train", str(config), *[a for o in overrides for a in ("--set", o)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_horovod_ranks_match_one_rank_with_the_doubled_batch_and_ddp(tmp_path, features):
    # As DDP's test: no BatchNorm, no dropout, so averaged gradients of 2 x 8 are those of 1 x 16 and of 1 x 8 x 2.
    config = experiment(tmp_path, features, model="lstm", dropout=0.0, backends=["ddp", "horovod"])
    train(config, "train.world_sizes=[2]", "train.batch_size=8")
    train(config, "train.world_sizes=[1]", "train.batch_size=16", "train.backends=[horovod]")
    train(config, "train.world_sizes=[1]", "train.batch_size=8", "train.grad_accumulation=2",
          "train.backends=[horovod]")
    configs = tmp_path / "run" / "configs"
    two = metrics(configs / "ws2-cpu-bs8-horovod")
    assert (two["backend"], two["launcher"], two["world_size"]) == ("horovod", "horovodrun", 2)
    assert two["rank_max_param_difference"] == 0.0
    assert two["mean_allreduce_s"] > 0  # the all-reduce of 2 ranks was timed
    assert metrics(configs / "ws2-cpu-bs8")["backend"] == "ddp"
    assert metrics(configs / "ws1-cpu-bs8-horovod")["global_batch_size"] == 16
    reference = weights(configs / "ws1-cpu-bs16-horovod")
    for name in ("ws2-cpu-bs8-horovod", "ws1-cpu-bs8-horovod", "ws2-cpu-bs8"):
        other = weights(configs / name)
        worst = max((other[k] - reference[k]).abs().max().item() for k in reference)
        assert worst < 1e-4, (name, worst)


def test_a_signal_mid_epoch_checkpoints_and_resumes_to_the_same_weights(tmp_path, features):
    uninterrupted = experiment(tmp_path / "a", features, backend="horovod")
    train(uninterrupted)
    config = experiment(tmp_path / "b", features, backend="horovod")
    folder = tmp_path / "b" / "run" / "configs" / "ws2-cpu-bs4-horovod"
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "train", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.kill(wait_for(lambda: rank0_pid(folder), "rank 0 to start"), signal.SIGUSR1)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == EXIT_INTERRUPTED, stderr
    stopped = json.loads((folder / "interrupted.json").read_text())
    assert "Traceback" not in (folder / "train.log").read_text()
    train(config)
    assert metrics(folder)["resumed_from"]["batches_done"] == stopped["batches_done"]
    assert 1 <= stopped["batches_done"] < metrics(folder)["steps_per_epoch"]  # it stopped mid-epoch
    reference = weights(tmp_path / "a" / "run" / "configs" / "ws2-cpu-bs4-horovod")
    final = weights(folder)
    assert all(torch.equal(final[k], reference[k]) for k in reference)


def test_a_named_horovod_configuration_trains_only_that_one(tmp_path, features):
    config = experiment(tmp_path, features, epochs=1, world_sizes=[1], backends=["ddp", "horovod"])
    result = pipeline("train", str(config), "--configuration", "ws1-cpu-bs4-horovod")
    assert result.returncode == 0, result.stdout + result.stderr
    configs = tmp_path / "run" / "configs"
    assert metrics(configs / "ws1-cpu-bs4-horovod")["launcher"] == "horovodrun"
    assert not (configs / "ws1-cpu-bs4").exists()
    made = yaml.safe_load((configs / "ws1-cpu-bs4-horovod" / "fingerprint.json").read_text())
    assert made["settings"]["backend"] == "horovod"
