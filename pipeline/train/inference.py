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
from pipeline.layout import RunLayout, TrainingPaths
from pipeline.preprocess import images
from pipeline.preprocess.chunking import split_into_chunks
from pipeline.preprocess.features import FeatureExtractor
from pipeline.train import checkpoint
from pipeline.train.data import build_dataset, image_tensor, normalise
from pipeline.train.evaluation import EvalSettings, evaluate
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
    return [paths.folder for paths in RunLayout(config.run_dir).trainings() if paths.model.exists()]


def choose(config: ExperimentConfig, name: str | None) -> Path:
    folders = trained_configurations(config)
    if not folders:
        raise FileNotFoundError(f"{RunLayout(config.run_dir).configs}: no trained configuration (model.pt); run "
                                "`pipeline train CONFIG` first")
    if name is None:
        return folders[0]
    for folder in folders:
        if folder.name == name:
            return folder
    raise ValueError(f"--configuration {name!r}: not trained in this run; trained: "
                     f"{', '.join(f.name for f in folders)}")


def load_trained(folder: Path) -> TrainedModel:
    """A configuration's final weights and what rebuilds its model, from model.pt. The file is read as plain data
    only (`checkpoint.read`): run folders are shared, and a crafted model.pt must not run code as whoever predicts
    or evaluates with it."""
    model_pt = TrainingPaths(Path(folder)).model
    state = checkpoint.read(model_pt)
    # The weights come from model.pt: no pretrained file is needed, and freezing is irrelevant for inference.
    train = build(TrainConfig, {**state["train"], "pretrained_weights": None, "freeze": "none"},
                  source=str(model_pt))
    model = build_model(train, len(state["labels"]), state["in_channels"], state.get("n_bins"))
    model.load_state_dict(state["model"])
    model.eval()
    return TrainedModel(Path(folder), model, state["labels"], train, state["in_channels"])


def evaluate_configuration(config: ExperimentConfig, folder: Path) -> dict:
    """Score one configuration's final weights on the test split; writes evaluation_test.json and its confusion."""
    trained = load_trained(folder)
    paths = TrainingPaths(Path(folder))
    test_set, _ = build_dataset(Path(config.run_dir), trained.config.input, trained.config.feature, "test")
    result = evaluate(trained.model, test_set, trained.labels,
                      EvalSettings(torch.device("cpu"), trained.config.batch_size))
    result["configuration"] = paths.name
    atomic_write_json(paths.evaluation_test, result)
    write_confusion(paths.confusion_test, result["confusion"], trained.labels, f"test, {paths.name}")
    return result


class ChunkInputs:
    """Turns one audio file into the model inputs of its chunks, prepared as in preprocessing and training.

    The feature extractor and the training statistics are set up once and reused for every file.
    """

    def __init__(self, config: ExperimentConfig, trained: TrainedModel) -> None:
        self.pre, self.sample_rate, self.train = config.preprocess, config.data.sample_rate, trained.config
        self.extractor = FeatureExtractor(self.pre, self.sample_rate)
        self.stats = None
        if self.train.input == "features":
            stats = json.loads(RunLayout(config.run_dir).features.stats.read_text())
            self.stats = stats[self.train.feature]

    def __call__(self, path: Path) -> torch.Tensor:
        pre = self.pre
        samples = load_audio(path, self.sample_rate)
        chunks = split_into_chunks(samples, pre, self.sample_rate)
        if not chunks.index:
            raise AudioError(f"{path}: shorter than one chunk ({len(samples) / self.sample_rate:.2f} s)"
                             if not chunks.total else f"{path}: every chunk is below the silence threshold")
        features = self.extractor(torch.from_numpy(chunks.samples))
        if self.stats is None:
            pictures = images.render(features[self.train.feature], pre.image_size, pre.colormap)
            return image_tensor(np.stack(pictures))
        stored = features[self.train.feature].half().float()  # the shards hold float16
        return normalise(stored, self.stats)


@torch.no_grad()
def predict_files(config: ExperimentConfig, folder: Path, paths: list[Path]) -> list[dict]:
    """One row per file: chunk count, predicted label and mean class probabilities (or the reason it failed)."""
    trained = load_trained(folder)
    chunk_inputs = ChunkInputs(config, trained)
    rows = []
    for path in paths:
        row: dict = {"path": str(path)}
        try:
            x = chunk_inputs(path)
        except (AudioError, OSError) as err:
            rows.append({**row, "chunks": 0, "predicted": "", "error": str(err)})
            continue
        probabilities = torch.softmax(trained.model(x), dim=1).mean(dim=0)
        rows.append({**row, "chunks": len(x), "predicted": trained.labels[int(probabilities.argmax())], "error": "",
                     **{f"p_{label}": round(float(p), 4) for label, p in zip(trained.labels, probabilities,
                                                                             strict=True)}})
    return rows
