"""Shared fixtures: a tiny dataset of real recorded speech (a few files per Fish Fillets speaker)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from pipeline.audio import AUDIO_SUFFIXES, load_audio, save_wav
from pipeline.data.demo import build_demo

FILES_PER_SPEAKER = 5
PREPARED_SPEECH = "PIPELINE_TEST_SPEECH"
"""A folder-per-speaker copy of the demo's speech for machines without its Debian packages (a GPU node's image:
benchmarks/gpu_node.py sets it to what `gpu_node.py prepare` made)."""


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four speaker folders of 16 kHz mono wav, built from the Debian packages like the demo, or from the folder
    that PIPELINE_TEST_SPEECH names."""
    out = tmp_path_factory.mktemp("speech")
    prepared = os.environ.get(PREPARED_SPEECH)
    if prepared:
        return speech_from_folder(Path(prepared), out, FILES_PER_SPEAKER)
    return build_demo(out, 16000, max_files_per_speaker=FILES_PER_SPEAKER)


def speech_from_folder(source: Path, out: Path, per_speaker: int) -> Path:
    """The first `per_speaker` recordings of each speaker folder of `source`, as 16 kHz wav like build_demo's."""
    speakers = sorted(folder for folder in source.iterdir() if folder.is_dir())
    if not speakers:
        raise FileNotFoundError(f"{PREPARED_SPEECH}={source}: no speaker folders")
    for folder in speakers:
        recordings = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)[:per_speaker]
        for recording in recordings:
            target = out / folder.name / f"{recording.stem}.wav"
            target.parent.mkdir(parents=True, exist_ok=True)
            save_wav(target, load_audio(recording, 16000), 16000)
    return out


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
