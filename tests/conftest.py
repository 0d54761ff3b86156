"""Shared fixtures: a tiny dataset of real recorded speech (a few files per Fish Fillets speaker)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.data.demo import build_demo

FILES_PER_SPEAKER = 5


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four speaker folders of 16 kHz mono wav, built from the Debian packages like the demo."""
    return build_demo(tmp_path_factory.mktemp("speech"), 16000, max_files_per_speaker=FILES_PER_SPEAKER)


def tiny_experiment(tmp_path: Path, speech_dir: Path, **sections: dict) -> Path:
    """Write a small experiment YAML under tmp_path; `sections` update its data/preprocess/train parts. It trains on
    the CPU (train.device: cpu) whether or not the machine has a GPU."""
    config = {
        "name": "tiny",
        "run_dir": str(tmp_path / "run"),
        "data": {"source": "folder", "root": str(speech_dir), "sample_rate": 16000},
        "preprocess": {"chunk_seconds": 1.0, "last_chunk": "pad", "image_size": 32, "workers": 2,
                       "files_per_task": 4, "n_mels": 32},
        # device cpu, not auto: the same runs, names and figures on a machine with GPUs (tests/gpu test those)
        "train": {"epochs": 2, "batch_size": 8, "world_sizes": [2], "device": "cpu"},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
