"""The classifiers on real speech features: each one learns, the two-class CNN is a sigmoid, freezing and
pretrained weights do what the config says."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from pipeline.audio import load_audio
from pipeline.config import PreprocessConfig, TrainConfig
from pipeline.preprocess.features import FeatureExtractor
from pipeline.preprocess.images import render
from pipeline.train.data import image_tensor
from pipeline.train.models import build_model, describe_init, is_convolutional

RATE = 16000
CHUNKS_PER_SPEAKER = 4


@pytest.fixture(scope="module")
def speech(speech_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """([16, 32, 101] log-mels of one-second chunks of real speech, [16] speaker labels 0-3), 4 chunks per speaker."""
    chunks, labels = [], []
    for label, folder in enumerate(sorted(p for p in speech_dir.iterdir() if p.is_dir())):
        audio = np.concatenate([load_audio(f, RATE) for f in sorted(folder.glob("*.wav"))])
        assert len(audio) >= CHUNKS_PER_SPEAKER * RATE
        chunks += [audio[i * RATE:(i + 1) * RATE] for i in range(CHUNKS_PER_SPEAKER)]
        labels += [label] * CHUNKS_PER_SPEAKER
    logmel = FeatureExtractor(PreprocessConfig(n_mels=32), RATE)(torch.from_numpy(np.stack(chunks)))["logmel"]
    return logmel, torch.tensor(labels)


def features(logmel: torch.Tensor, frames: int | None = None) -> torch.Tensor:
    """[n, 1, bins, frames] normalised per bin, as the training data loader gives them."""
    x = logmel[:, :, :frames]
    mean, std = x.mean(dim=(0, 2), keepdim=True), x.std(dim=(0, 2), keepdim=True)
    return ((x - mean) / std).unsqueeze(1)


def images(logmel: torch.Tensor, size: int = 48) -> torch.Tensor:
    """[n, 3, size, size] ImageNet-normalised spectrogram images, as the image loader gives them."""
    return image_tensor(render(logmel, size, "magma"))


def train_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float = 1e-3) -> list[float]:
    """Adam steps on one fixed batch; the loss of each step."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(("name", "n_classes", "input_kind", "lr"), [
    ("cnn", 2, "features", 1e-3),  # two classes: the single-sigmoid-unit path
    ("cnn", 4, "images", 1e-3),
    ("lstm", 4, "features", 3e-3),
    ("resnet50", 4, "features", 1e-3),  # one channel, repeated to three
    ("densenet121", 4, "images", 1e-3),
])
def test_each_model_learns_real_speech_features(speech, name, n_classes, input_kind, lr):
    logmel, labels = speech
    keep = labels < n_classes
    logmel, y = logmel[keep], labels[keep]
    if input_kind == "images":
        x = images(logmel)
    else:  # the large backbones get fewer frames, to stay fast on a CPU
        x = features(logmel, frames=48 if name in ("resnet50", "densenet121") else None)
    torch.manual_seed(0)
    model = build_model(TrainConfig(model=name, dropout=0.1), n_classes, x.shape[1], n_bins=x.shape[2])
    losses = train_steps(model, x, y, steps=10, lr=lr)
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0], losses  # the last steps, as one step can bounce
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (len(y), n_classes)


def test_two_class_cnn_has_one_sigmoid_unit_and_its_logits_match_bce(speech):
    logmel, labels = speech
    keep = labels < 2
    x, y = features(logmel[keep]), labels[keep]
    torch.manual_seed(0)
    model = build_model(TrainConfig(model="cnn"), 2, 1).eval()
    final = model.head[-1]
    assert isinstance(final, nn.Linear) and final.out_features == 1
    captured = {}
    final.register_forward_hook(lambda module, args, output: captured.update(z=output))
    with torch.no_grad():
        logits = model(x)
    z = captured["z"].squeeze(1)
    assert logits.shape == (len(y), 2)
    assert z.abs().max() > 1e-3  # a non-trivial check
    torch.testing.assert_close(logits.softmax(dim=1)[:, 1], torch.sigmoid(z))
    torch.testing.assert_close(nn.functional.cross_entropy(logits, y),
                               nn.functional.binary_cross_entropy_with_logits(z, y.float()))


@pytest.mark.parametrize("name", ["resnet50", "densenet121"])
def test_frozen_backbone_trains_only_the_head_and_keeps_batchnorm_statistics(speech, name):
    logmel, labels = speech
    x = features(logmel, frames=48)
    torch.manual_seed(0)
    model = build_model(TrainConfig(model=name, freeze="backbone"), 4, 1)
    head = "backbone.fc." if name == "resnet50" else "backbone.classifier."
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(head) for n in trainable)
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(head)}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model, x, labels, steps=1)
    assert model.training
    assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    after = model.state_dict()
    for key, value in before.items():
        if not key.startswith(head):
            assert torch.equal(after[key], value), f"{key} changed although it is frozen"
    assert not torch.equal(after[f"{head}0.weight"], before[f"{head}0.weight"])


def test_first_k_keeps_the_first_blocks_trainable_and_freezes_the_rest(speech):
    logmel, labels = speech
    x = features(logmel, frames=48)
    torch.manual_seed(0)
    model = build_model(TrainConfig(model="resnet50", freeze="first_k", trainable_blocks=2), 4, 1)
    trainable_prefixes = ("backbone.conv1.", "backbone.bn1.", "backbone.layer1.", "backbone.fc.")
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == name.startswith(trainable_prefixes), name
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model, x, labels, steps=1)
    after = model.state_dict()
    # Trainable blocks learn and update their BatchNorm statistics; frozen ones change in no way at all.
    for key in ("backbone.conv1.weight", "backbone.layer1.0.conv1.weight", "backbone.layer1.0.bn1.running_mean"):
        assert not torch.equal(after[key], before[key]), key
    for key in before:
        if key.startswith(("backbone.layer2.", "backbone.layer3.", "backbone.layer4.")):
            assert torch.equal(after[key], before[key]), key
    assert model.backbone.layer1[0].bn1.training and not model.backbone.layer2[0].bn1.training


def test_bad_freeze_settings_are_rejected():
    with pytest.raises(ValueError, match="train.trainable_blocks"):
        build_model(TrainConfig(model="resnet50", freeze="first_k", trainable_blocks=6), 4, 1)
    with pytest.raises(ValueError, match="train.freeze"):
        build_model(TrainConfig(model="cnn", freeze="backbone"), 4, 1)
    with pytest.raises(ValueError, match="train.freeze"):
        build_model(TrainConfig(model="lstm", freeze="first_k"), 4, 1, n_bins=32)


def test_pretrained_weights_are_loaded_into_the_backbone_and_the_head_is_new(tmp_path):
    torch.manual_seed(1)
    published = torchvision.models.resnet50(weights=None).state_dict()
    # Like torchvision's published file: a full state_dict with its 1000-class fc, without BatchNorm batch counters.
    path = tmp_path / "resnet50-test.pth"
    torch.save({k: v for k, v in published.items() if not k.endswith("num_batches_tracked")}, path)
    torch.manual_seed(2)
    config = TrainConfig(model="resnet50", pretrained_weights=str(path))
    model = build_model(config, 3, 3)
    state = model.state_dict()
    for key in ("conv1.weight", "layer3.2.conv2.weight", "layer4.2.bn3.running_var"):
        assert torch.equal(state[f"backbone.{key}"], published[key]), key
    assert model.backbone.fc[-1].out_features == 3
    assert describe_init(config) == f"pretrained from {path}"
    assert describe_init(TrainConfig(model="resnet50")) == "from scratch (no pretrained_weights)"


def test_published_densenet_key_names_are_understood(tmp_path):
    torch.manual_seed(1)
    published = torchvision.models.densenet121(weights=None).state_dict()
    # torchvision's densenet121 file spells 'denselayer1.norm1.weight' as 'denselayer1.norm.1.weight'.
    old = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in published.items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    path = tmp_path / "densenet121-test.pth"
    torch.save(old, path)
    model = build_model(TrainConfig(model="densenet121", pretrained_weights=str(path)), 4, 1)
    key = "features.denseblock2.denselayer3.norm1.weight"
    assert torch.equal(model.state_dict()[f"backbone.{key}"], published[key])


def test_bad_pretrained_weights_are_reported_with_the_file(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match="train.pretrained_weights") as error:
        build_model(TrainConfig(model="resnet50", pretrained_weights=str(missing)), 4, 3)
    assert str(missing) in str(error.value)
    wrong = tmp_path / "cnn.pth"
    torch.save(build_model(TrainConfig(model="cnn"), 4, 1).state_dict(), wrong)
    with pytest.raises(ValueError, match="does not match") as error:
        build_model(TrainConfig(model="densenet121", pretrained_weights=str(wrong)), 4, 3)
    assert str(wrong) in str(error.value)
    with pytest.raises(ValueError, match="train.pretrained_weights"):
        build_model(TrainConfig(model="cnn", pretrained_weights=str(wrong)), 4, 1)


def test_lstm_needs_feature_input():
    with pytest.raises(ValueError, match="train.input"):
        build_model(TrainConfig(model="lstm", input="images"), 4, 3, n_bins=32)
    assert not is_convolutional("lstm")
    assert all(is_convolutional(name) for name in ("cnn", "resnet50", "densenet121"))
