"""`pipeline evaluate` and `pipeline predict` on a trained configuration."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.config import load_config
from pipeline.data.manifest import data_root, source_path
from pipeline.train.data import load_split, split_rows
from pipeline.train.inference import load_trained


def pipeline(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, check=False,
                          timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, features: Path) -> tuple[Path, Path]:
    from tests.train.conftest import experiment

    config = experiment(tmp_path_factory.mktemp("inference"), features, world_sizes=[1], epochs=2)
    result = pipeline("train", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    return config, config.parent / "run" / "configs" / "ws1-cpu-bs4"


def test_evaluate_reproduces_the_test_metrics_of_training(trained):
    config, folder = trained
    result = pipeline("evaluate", str(config))
    assert result.returncode == 0, result.stderr
    assert "evaluate: ws1-cpu-bs4: test accuracy" in result.stdout
    evaluation = json.loads((folder / "evaluation_test.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    assert evaluation["accuracy"] == metrics["test_accuracy"]
    assert evaluation["confusion"] == metrics["test_confusion"]
    assert (folder / "confusion_test.csv").exists()


def test_predict_chunks_new_audio_exactly_as_preprocessing_did(trained, tmp_path):
    config, folder = trained
    run = folder.parent.parent
    test_rows = split_rows(run, "test")
    made_with = load_config(run / "config.yaml").data  # the index names files relative to the data root it records
    source = str(source_path(data_root(made_with), test_rows[0]["path"]))
    strange = tmp_path / "a 'quoted' ñame.wav"
    strange.write_bytes(Path(source).read_bytes())
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not audio")
    result = pipeline("predict", str(config), source, str(strange), str(not_audio))
    assert result.returncode == 2 and "1 of 3 files could not be classified" in result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["path"] for r in rows] == [source, str(strange), str(not_audio)]
    assert rows[2]["error"] and rows[2]["chunks"] == "0"

    # The same chunks read from the feature shards give the same probabilities.
    model = load_trained(folder)
    x, _, labels = load_split(run, "logmel", "test")
    mine = [i for i, r in enumerate(test_rows) if r["path"] == test_rows[0]["path"]]
    assert int(rows[0]["chunks"]) == len(mine)
    with torch.no_grad():
        expected = torch.softmax(model.model(x[mine]), dim=1).mean(dim=0)
    for row in rows[:2]:
        assert row["predicted"] == labels[int(expected.argmax())]
        got = torch.tensor([float(row[f"p_{label}"]) for label in labels])
        assert torch.allclose(got, expected, atol=1e-3)
