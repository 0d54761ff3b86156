"""Every model on every input the config allows: one real training step on inputs of exactly the shape the
preprocessing makes, or a refusal at config validation that names the keys and the smallest input.

Before `HalvingPool`, `cnn` and `densenet121` crashed on 13 MFCCs at every chunk length (four or five 2 x 2 pools
shrank the 13 bins to 0); this grid is what keeps such a combination from slipping through again.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import ConfigError, ExperimentConfig, input_shape, load_config
from pipeline.preprocess.chunking import split_into_chunks
from pipeline.preprocess.features import FeatureExtractor
from pipeline.preprocess.images import render
from pipeline.train.data import image_tensor, normalise
from pipeline.train.models import build_model, is_convolutional

MODELS = ("cnn", "resnet50", "densenet121", "lstm")
INPUTS = [("features", "logmel"), ("features", "mfcc"), ("images", "logmel"), ("images", "mfcc")]
CHUNK_SECONDS = (1, 3, 5, 10)  # seed 001 used 3, 5 and 10 s; 1 s is common


def experiment(tmp_path: Path, *overrides: str) -> ExperimentConfig:
    """The config as `pipeline config` and `pipeline train` load it, from a YAML file and --set overrides."""
    path = tmp_path / "grid.yaml"
    path.write_text("name: grid\npreprocess:\n  image_features: [logmel, mfcc]\n")
    return load_config(path, list(overrides))


def preprocessed_shape(config: ExperimentConfig) -> torch.Size:
    """[1, channels, height, width] of one training input, made by the preprocessing's own chunking, features and
    images, and the training loader's normalisation."""
    pre, rate = config.preprocess, config.data.sample_rate
    recording = np.random.default_rng(0).standard_normal(round(pre.chunk_seconds * rate)).astype(np.float32)
    chunks = split_into_chunks(recording, pre, rate).samples
    features = FeatureExtractor(pre, rate)(torch.from_numpy(chunks))[config.train.feature]
    if config.train.input == "images":
        return image_tensor(render(features, pre.image_size, pre.colormap)).shape
    stats = {"mean": [0.0] * features.shape[1], "std": [1.0] * features.shape[1]}
    return normalise(features, stats).shape


def one_training_step(config: ExperimentConfig, x: torch.Tensor) -> None:
    """Forward, backward and one Adam step, with the model built and laid out as the trainer does; every trainable
    parameter must get a finite gradient and the step must change the weights."""
    torch.manual_seed(0)
    model = build_model(config.train, 2, x.shape[1], n_bins=x.shape[2])
    if config.train.channels_last and is_convolutional(config.train.model):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    logits = model(x)
    assert logits.shape == (x.shape[0], 2)
    loss = nn.functional.cross_entropy(logits, torch.arange(x.shape[0]) % 2)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("seconds", CHUNK_SECONDS)
@pytest.mark.parametrize(("input_kind", "feature"), INPUTS)
@pytest.mark.parametrize("model", MODELS)
def test_every_model_trains_on_every_input_or_the_config_refuses_it(tmp_path, model, input_kind, feature, seconds):
    overrides = [f"train.model={model}", f"train.input={input_kind}", f"train.feature={feature}",
                 f"preprocess.chunk_seconds={seconds}"]
    if model == "lstm" and input_kind == "images":  # the only combination that cannot work: no frames to read
        with pytest.raises(ConfigError, match=r"'train\.model: lstm'.*'train\.input: images'"):
            experiment(tmp_path, *overrides)
        return
    config = experiment(tmp_path, *overrides)
    shape = preprocessed_shape(config)
    assert tuple(shape[2:]) == input_shape(config)  # the validation reasons about the shape training gets
    torch.manual_seed(seconds)
    one_training_step(config, torch.randn(2, *shape[1:]))


@pytest.mark.parametrize(("model", "overrides"), [
    ("cnn", ["train.input=images", "preprocess.image_size=8"]),
    ("resnet50", ["train.input=images", "preprocess.image_size=32"]),
    ("resnet50", ["train.feature=mfcc", "preprocess.chunk_seconds=0.2"]),  # 13 x 21
    ("densenet121", ["train.feature=mfcc", "preprocess.chunk_seconds=0.5"]),  # 13 x 51
])
def test_batch_size_one_with_a_one_by_one_deepest_map_is_refused_naming_the_smallest_input(tmp_path, model,
                                                                                           overrides):
    """A BatchNorm in training cannot normalise a single value per channel; the message names the keys, the shape
    the config gives and the smallest input, which the real model confirms: it trains at batch size 1 on
    smallest x 1 and fails on (smallest - 1) x 1."""
    with pytest.raises(ConfigError) as refused:
        experiment(tmp_path, f"train.model={model}", "train.batch_size=1", *overrides)
    message = str(refused.value)
    assert f"'train.model: {model}'" in message and "'train.batch_size'" in message
    keys = ["preprocess.image_size"] if "train.input=images" in overrides else [
        "'train.feature: mfcc'", "preprocess.n_mfcc", "preprocess.chunk_seconds", "preprocess.hop_length"]
    assert all(key in message for key in keys), message
    accepted = experiment(tmp_path, f"train.model={model}", "train.batch_size=2", *overrides)
    height, width = input_shape(accepted)
    assert f"gives {height} x {width}" in message
    smallest = int(message.split("smallest input ")[1].split(" x ")[0])
    assert {"cnn": 16, "resnet50": 33, "densenet121": 61}[model] == smallest
    one_training_step(accepted, torch.randn(1, 1, smallest, 1))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        one_training_step(accepted, torch.randn(1, 1, smallest - 1, 1))


def test_a_chunk_too_short_for_the_stft_is_refused(tmp_path):
    """160 samples cannot be reflect-padded by n_fft // 2 = 200 for the centred STFT: refused, not crashed on."""
    with pytest.raises(ConfigError, match=r"'preprocess\.chunk_seconds' 0\.01 is 160 samples.*'preprocess\.n_fft'"):
        experiment(tmp_path, "preprocess.chunk_seconds=0.01")
    config = experiment(tmp_path)
    with pytest.raises(RuntimeError, match="Padding size"):
        FeatureExtractor(config.preprocess, config.data.sample_rate)(torch.zeros(1, 160))
