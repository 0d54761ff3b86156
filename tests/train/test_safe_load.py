"""model.pt and checkpoints are read as plain data only: a file carrying a pickled callable is refused by `pipeline
predict`, `pipeline evaluate` and a resuming `pipeline train`, naming the file, and its code never runs; the files
training writes (and the checkpoints of the previous version, numpy RNG state included) still load."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.train import checkpoint
from pipeline.train.checkpoint import UnsafeFileError
from tests.train.conftest import experiment

CONFIGURATION = "ws1-cpu-bs4"


class RunsCode:
    """What a crafted file holds: unpickling it calls `os.system` (here: touch a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def pipeline(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, check=False,
                          timeout=600)


def crafted(path: Path, marker: Path, genuine: dict) -> None:
    """Overwrite `path` with the `genuine` state plus an object whose unpickling runs code."""
    torch.save({**genuine, "extra": RunsCode(marker)}, path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, features: Path) -> tuple[Path, Path]:
    """A configuration trained for one epoch: (its experiment YAML, its folder)."""
    config = experiment(tmp_path_factory.mktemp("safe-load"), features, world_sizes=[1], epochs=1)
    result = pipeline("train", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    return config, config.parent / "run" / "configs" / CONFIGURATION


def test_the_files_training_writes_hold_plain_data_only_and_load(trained):
    _, folder = trained
    for path in (folder / "model.pt", folder / "checkpoints" / "last.pt"):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == [], path
        assert checkpoint.read(path)
    assert not set(checkpoint.LEGACY_NUMPY_GLOBALS) & set(torch.serialization.get_safe_globals())  # scoped


def test_a_crafted_file_is_refused_naming_it_and_its_code_never_runs(tmp_path):
    marker, path = tmp_path / "MARKER", tmp_path / "model.pt"
    crafted(path, marker, {"model": {}})
    with pytest.raises(UnsafeFileError) as refused:
        checkpoint.read(path)
    assert str(refused.value).startswith(f"{path}: refused to load: it names posix.system, and loading it would run")
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the file really does run code when unpickled the old way
    assert marker.exists()


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_evaluate_and_predict_refuse_a_crafted_model_pt(tmp_path, trained, command):
    _, folder = trained
    copy = tmp_path / "run"
    shutil.copytree(folder.parent.parent, copy)
    model_pt, marker = copy / "configs" / CONFIGURATION / "model.pt", tmp_path / "MARKER"
    crafted(model_pt, marker, checkpoint.read(model_pt))
    audio = next(Path(yaml.safe_load((copy / "config.yaml").read_text())["data"]["root"]).rglob("*.wav"))
    args = [str(copy)] + ([str(audio)] if command == "predict" else [])
    result = pipeline(command, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"pipeline {command}: error: {model_pt}: refused to load: it names posix.system" in result.stderr
    assert "Traceback" not in result.stderr and not marker.exists()


def test_resuming_from_a_crafted_checkpoint_is_refused(tmp_path, trained):
    _, folder = trained
    copy = tmp_path / "run"
    shutil.copytree(folder.parent.parent, copy)
    done = copy / "configs" / CONFIGURATION
    (done / "metrics.json").unlink()  # as if it had stopped after its last checkpoint: the next train resumes
    last, marker = done / "checkpoints" / "last.pt", tmp_path / "MARKER"
    crafted(last, marker, checkpoint.read(last))
    result = pipeline("train", str(copy))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"UnsafeFileError: {last}: refused to load: it names posix.system" in result.stderr
    assert not marker.exists() and not (done / "metrics.json").exists()


def test_a_checkpoint_of_the_previous_version_still_resumes_the_same_random_streams(tmp_path):
    """Before, a checkpoint held numpy's RNG state as `get_state()`'s tuple with an ndarray: it still loads, with
    exactly the numpy globals that rebuild its array allowed, and the streams go on where they stopped, as with a
    checkpoint written now (which holds no numpy global at all)."""
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    np.random.seed(5)
    random.seed(5)
    np.random.rand(3)  # somewhere in the stream, with a cached gaussian
    np.random.standard_normal()
    for legacy in (True, False):
        state = checkpoint.state_dict(model, optimizer, scheduler, checkpoint.Progress(epoch=2))
        if legacy:
            state["rng"]["numpy"] = np.random.get_state()
        path = tmp_path / f"legacy-{legacy}.pt"
        torch.save(state, path)
        expected = (np.random.rand(5), np.random.standard_normal(), random.random(), torch.rand(2))
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        assert bool(unsafe) == legacy and set(unsafe) <= {"numpy._core.multiarray._reconstruct", "numpy.ndarray",
                                                          "numpy.dtype", "numpy.dtypes.UInt32DType"}
        progress = checkpoint.load_state_dict(checkpoint.read(path), model, optimizer, scheduler)
        again = (np.random.rand(5), np.random.standard_normal(), random.random(), torch.rand(2))
        assert progress.epoch == 2
        assert np.array_equal(again[0], expected[0]) and again[1:3] == expected[1:3]
        assert torch.equal(again[3], expected[3])

