"""Fixtures of the training tests: one preprocessed run folder, copied into each test's own run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config, save_config
from pipeline.preprocess.run import preprocess
from pipeline.stages import data_stage
from tests.conftest import tiny_experiment


@pytest.fixture(scope="session")
def features(tmp_path_factory: pytest.TempPathFactory, speech_dir: Path) -> Path:
    """A run folder with preprocessed features (1 s chunks, 32 mel bands, 32 px images), made once."""
    base = tmp_path_factory.mktemp("engine")
    config = load_config(tiny_experiment(base, speech_dir))
    save_config(config, Path(config.run_dir) / "config.yaml")
    data_stage(config)
    preprocess(config)
    return Path(config.run_dir)


def experiment(tmp_path: Path, features: Path, **train: object) -> Path:
    """A config whose run folder is a private copy of the prepared features (and their preprocessing settings); it
    trains on the CPU (train.device: cpu) on any machine."""
    run_dir = tmp_path / "run"
    if not run_dir.exists():
        shutil.copytree(features, run_dir, ignore=shutil.ignore_patterns("configs"))
    made_with = yaml.safe_load((features / "config.yaml").read_text())
    config = {"name": "engine", "run_dir": str(run_dir), "data": made_with["data"],
              "preprocess": made_with["preprocess"],
              "train": {"epochs": 2, "batch_size": 4, "world_sizes": [2], "seed": 3, "device": "cpu", **train}}
    path = tmp_path / "engine.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


