"""Using a trained configuration: `pipeline evaluate` (its test split) and `pipeline predict` (new audio files).

Prediction runs new audio through exactly the preprocessing the model was trained on (the run's resolved config:
sample rate, chunking, features, float16 storage, training-split normalisation or image rendering), classifies each
chunk, and averages the chunk probabilities per file.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from pipeline.audio import AudioError, load_audio
from pipeline.config import ExperimentConfig, TrainConfig, build
from pipeline.io import atomic_write_json
from pipeline.preprocess import images
from pipeline.preprocess.chunking import chunk_bounds, cut_chunks
from pipeline.preprocess.features import FeatureExtractor
from pipeline.train.data import IMAGENET_MEAN, IMAGENET_STD, build_dataset, normalise
from pipeline.train.evaluation import evaluate
from pipeline.train.metrics import write_confusion
from pipeline.train.models import build_model


@dataclasses.dataclass
class TrainedModel:
    folder: Path
    model: torch.nn.Module
    labels: list[str]
    config: TrainConfig
    in_channels: int


def trained_configurations(config: ExperimentConfig) -> list[Path]:
    """Configuration folders of the run that have final weights, in name order."""
    return sorted(p.parent for p in (Path(config.run_dir) / "configs").glob("*/model.pt"))


def choose(config: ExperimentConfig, name: str | None) -> Path:
    folders = trained_configurations(config)
    if not folders:
        raise FileNotFoundError(f"{Path(config.run_dir) / 'configs'}: no trained configuration (model.pt); run "
                                "`pipeline train CONFIG` first")
    if name is None:
        return folders[0]
    for folder in folders:
        if folder.name == name:
            return folder
    raise ValueError(f"--configuration {name!r}: not trained in this run; trained: "
                     f"{', '.join(f.name for f in folders)}")


def load_trained(folder: Path) -> TrainedModel:
    state = torch.load(Path(folder) / "model.pt", map_location="cpu", weights_only=False)
    # The weights come from model.pt: no pretrained file is needed, and freezing is irrelevant for inference.
    train = build(TrainConfig, {**state["train"], "pretrained_weights": None, "freeze": "none"},
                  source=str(Path(folder) / "model.pt"))
    model = build_model(train, len(state["labels"]), state["in_channels"], state.get("n_bins"))
    model.load_state_dict(state["model"])
    model.eval()
    return TrainedModel(Path(folder), model, state["labels"], train, state["in_channels"])


def evaluate_configuration(config: ExperimentConfig, folder: Path) -> dict:
    """Score one configuration's final weights on the test split; writes evaluation_test.json and its confusion."""
    trained = load_trained(folder)
    test_set, _, _ = build_dataset(Path(config.run_dir), trained.config.input, trained.config.feature, "test")
    result = evaluate(trained.model, test_set, trained.labels, torch.device("cpu"), trained.config.batch_size)
    result["configuration"] = folder.name
    atomic_write_json(folder / "evaluation_test.json", result)
    write_confusion(folder / "confusion_test", result["confusion"], trained.labels, f"test, {folder.name}")
    return result


def chunk_inputs(path: Path, config: ExperimentConfig, trained: TrainedModel) -> torch.Tensor:
    """The model inputs of every chunk of one audio file, prepared as in preprocessing and training."""
    pre, sample_rate = config.preprocess, config.data.sample_rate
    samples = load_audio(path, sample_rate)
    chunk = round(pre.chunk_seconds * sample_rate)
    bounds = chunk_bounds(len(samples), chunk, pre.last_chunk, pre.min_last_chunk)
    if not bounds:
        raise AudioError(f"{path}: shorter than one chunk ({len(samples) / sample_rate:.2f} s)")
    features = FeatureExtractor(pre, sample_rate)(torch.from_numpy(cut_chunks(samples, bounds, chunk)))
    if trained.config.input == "images":
        pictures = images.render(features[pre.image_feature], pre.image_size, pre.colormap)
        x = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float() / 255.0
        return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    stats = json.loads((Path(config.run_dir) / "features" / "stats.json").read_text())
    stored = features[trained.config.feature].half().float()  # the shards hold float16
    return normalise(stored, stats[trained.config.feature])


@torch.no_grad()
def predict_files(config: ExperimentConfig, folder: Path, paths: list[Path]) -> list[dict]:
    """One row per file: chunk count, predicted label and mean class probabilities (or the reason it failed)."""
    trained = load_trained(folder)
    rows = []
    for path in paths:
        row: dict = {"path": str(path)}
        try:
            x = chunk_inputs(path, config, trained)
        except (AudioError, OSError) as err:
            rows.append({**row, "chunks": 0, "predicted": "", "error": str(err)})
            continue
        probabilities = torch.softmax(trained.model(x), dim=1).mean(dim=0)
        rows.append({**row, "chunks": len(x), "predicted": trained.labels[int(probabilities.argmax())], "error": "",
                     **{f"p_{label}": round(float(p), 4) for label, p in zip(trained.labels, probabilities,
                                                                             strict=True)}})
    return rows
