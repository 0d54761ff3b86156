"""Helpers shared by the tests that run the preprocessing somewhere else than serially in-process: prepare a run
and check that its outputs are exactly those of a serial run."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pipeline.config import ExperimentConfig, load_config
from pipeline.preprocess.run import preprocess
from pipeline.stages import data_stage
from tests.conftest import tiny_experiment


def prepared(tmp_path: Path, speech_dir: Path, **preprocess_keys) -> tuple[Path, ExperimentConfig]:
    """A tiny experiment with its manifest written, ready to preprocess; returns its YAML path and config."""
    path = tiny_experiment(tmp_path, speech_dir, preprocess=preprocess_keys)
    config = load_config(path)
    data_stage(config)
    return path, config


def serial_run(tmp_path: Path, speech_dir: Path, **preprocess_keys) -> Path:
    """The run folder of a serial, in-process preprocessing: the reference every other way must reproduce."""
    _, config = prepared(tmp_path, speech_dir, **preprocess_keys)
    preprocess(config)
    return Path(config.run_dir)


def complete_shards(features: Path) -> list[Path]:
    return sorted(p for p in features.glob("shard-*") if (p / "summary.json").is_file())


def assert_same_outputs(expected_run: Path, actual_run: Path) -> None:
    """index.csv, stats.json, labels.json, rejects.csv, every shard's arrays and chunks, and every image shard (or
    image file), byte for byte (arrays value for value) the same."""
    a, b = Path(expected_run) / "features", Path(actual_run) / "features"
    for name in ("index.csv", "stats.json", "labels.json", "rejects.csv"):
        assert (a / name).read_text() == (b / name).read_text(), f"{name} differs"
    shards = [p.name for p in sorted(a.glob("shard-*"))]
    assert shards and shards == [p.name for p in sorted(b.glob("shard-*"))]
    for shard in shards:
        files = sorted(p.name for p in (a / shard).iterdir())
        assert files == sorted(p.name for p in (b / shard).iterdir()), shard
        for name in files:
            if name.endswith(".npy"):
                x, y = np.load(a / shard / name), np.load(b / shard / name)
                assert x.dtype == y.dtype and np.array_equal(x, y), f"{shard}/{name} differs"
        assert (a / shard / "chunks.csv").read_text() == (b / shard / "chunks.csv").read_text(), shard
    assert _tree_digest(Path(expected_run) / "images") == _tree_digest(Path(actual_run) / "images")
    assert not list(b.glob(".shard-*")), "temporary shard folders were left behind"
    assert not list((Path(actual_run) / "images").glob("*/.shard-*")), "temporary image tars were left behind"


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}
