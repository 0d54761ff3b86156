"""The classifiers that `train.model` names, built from a TrainConfig.

- `cnn`: seed 000's small CNN (conv-BN-ReLU-maxpool blocks, average pooling, dropout, linear).
- `resnet50` (seed 001) and `densenet121` (seed 004): torchvision backbones whose classifier is replaced by the seeds'
  512-dropout-512-dropout head, optionally initialised from a local torchvision state_dict and partly frozen.
- `lstm`: a bidirectional LSTM over the frames of a feature.

Every model maps a [batch, in_channels, height, width] float tensor to [batch, n_classes] logits, so training and
evaluation treat them alike (cross-entropy, argmax, softmax scores). `in_channels` is 1 for feature maps
([batch, 1, bins, frames], normalised) and 3 for ImageNet-normalised RGB spectrogram images.

Every model takes any input of at least 1 x 1 (13 MFCC bins, 1 s chunks, small images): the halving pools of `cnn`
and of DenseNet's transitions leave an axis of length 1 alone instead of shrinking it to 0 (`HalvingPool`), and
ResNet's strided layers round up. What still cannot work, a BatchNorm in training that sees one value per channel
(a batch of 1 whose deepest map is 1 x 1), is refused at config validation (`_check_input_shape` in pipeline/config.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from pipeline.config import TrainConfig

HEAD_WIDTH = 512

# Backbone blocks counted from the input, as dotted sub-module paths of the torchvision model. `freeze: first_k`
# keeps the first `trainable_blocks` of them trainable. Together they hold every backbone parameter.
BLOCKS: dict[str, list[tuple[str, ...]]] = {
    "resnet50": [("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)],
    "densenet121": [
        ("features.conv0", "features.norm0"),
        ("features.denseblock1", "features.transition1"),
        ("features.denseblock2", "features.transition2"),
        ("features.denseblock3", "features.transition3"),
        ("features.denseblock4", "features.norm5"),
    ],
}
# The torchvision attribute holding the classifier that the seeds' head replaces, and its input width.
HEAD_ATTRIBUTE = {"resnet50": ("fc", 2048), "densenet121": ("classifier", 1024)}


def build_model(config: TrainConfig, n_classes: int, in_channels: int, n_bins: int | None = None) -> nn.Module:
    """The model `config.model` for `n_classes` classes and inputs with `in_channels` channels (1 or 3).

    `n_bins` (the feature's bin count, `x.shape[2]`) is needed by `lstm` only, whose LSTM input size it is.
    """
    if n_classes < 2:
        raise ValueError(f"need at least two classes to train a classifier, got {n_classes}")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 (features) or 3 (RGB images), got {in_channels}")
    name = config.model
    if name in BLOCKS:
        return TransferNet(name, config, n_classes, in_channels)
    if name not in ("cnn", "lstm"):
        raise ValueError(f"train.model: unknown model {name!r}")
    if config.pretrained_weights is not None:
        raise ValueError(f"train.pretrained_weights: pretrained weights are only supported for resnet50 and "
                         f"densenet121, not {name!r}")
    if config.freeze != "none":
        raise ValueError(f"train.freeze: {config.freeze!r} is only supported for resnet50 and densenet121; "
                         f"{name!r} needs 'none'")
    if name == "cnn":
        return SpectrogramCNN(n_classes, in_channels, dropout=config.dropout)
    if in_channels != 1:
        raise ValueError("train.input: the lstm reads feature sequences; use input 'features', not 'images'")
    if n_bins is None:
        raise ValueError("the lstm needs n_bins, the number of feature bins per frame (x.shape[2])")
    return FrameLSTM(n_bins, n_classes, dropout=config.dropout)


FP32_UNDER_AUTOCAST = {"lstm": "lstm layers in fp32"}
"""Models with layers that run in fp32 even under bf16 autocast, and what metrics.json says about it."""


def precision_of(name: str, autocast: bool) -> str:
    """What the forward pass of `train.model` really runs in: `fp32`, `bf16` (autocast), or bf16 with the layers
    that stay in fp32 named, e.g. `bf16 (lstm layers in fp32)`."""
    if not autocast:
        return "fp32"
    exception = FP32_UNDER_AUTOCAST.get(name)
    return f"bf16 ({exception})" if exception else "bf16"


def is_convolutional(name: str) -> bool:
    """Whether `train.model` is a convolutional network, for which the channels-last memory format pays off."""
    return name in ("cnn", "resnet50", "densenet121")


def describe_init(config: TrainConfig) -> str:
    """How the model's weights start, for metrics and reports."""
    if config.pretrained_weights:
        return f"pretrained from {config.pretrained_weights}"
    return "from scratch (no pretrained_weights)"


class HalvingPool(nn.Module):
    """A 2 x 2 max or average pool (stride 2) that leaves an axis shorter than 2 as it is.

    A plain 2 x 2 pool turns an axis of length 1 into 0, so four of them refuse anything under 16 bins (13 MFCCs).
    Wherever every pooled axis is >= 2 this is exactly nn.MaxPool2d(2) / nn.AvgPool2d(2), so the usual 64-mel case
    and pretrained weights are unaffected (it has no parameters: state_dicts stay the same).
    """

    def __init__(self, kind: str):
        super().__init__()
        self.pool = {"max": F.max_pool2d, "avg": F.avg_pool2d}[kind]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = tuple(2 if n >= 2 else 1 for n in x.shape[-2:])
        return x if kernel == (1, 1) else self.pool(x, kernel)


class SpectrogramCNN(nn.Module):
    """Seed 000's CNN over a [batch, in_channels, height, width] map.

    For exactly two classes it has one output unit z with a sigmoid, as seed 000 did. So that callers can treat every
    model alike, `forward` returns the two logits [-z/2, z/2]: softmax over them gives exactly sigmoid(z) for class 1
    (e^(z/2) / (e^(-z/2) + e^(z/2)) = 1 / (1 + e^-z)), and cross-entropy over them equals BCE-with-logits on z.
    """

    def __init__(self, n_classes: int, in_channels: int = 1, width: int = 32, dropout: float = 0.25):
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                                 nn.ReLU(inplace=True), HalvingPool("max"))

        self.binary = n_classes == 2
        self.features = nn.Sequential(block(in_channels, width // 2), block(width // 2, width),
                                      block(width, 2 * width), block(2 * width, 2 * width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(2 * width, 1 if self.binary else n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.pool(self.features(x)))
        return torch.cat([-z / 2, z / 2], dim=1) if self.binary else z


class FrameLSTM(nn.Module):
    """A 2-layer bidirectional LSTM reading a [batch, 1, bins, frames] feature as a sequence of frames.

    The outputs are averaged over time (every frame counts, not just the last one, which in a fixed-length chunk is
    an arbitrary point of the utterance), then go through dropout and one linear layer.
    """

    def __init__(self, n_bins: int, n_classes: int, hidden: int = 128, dropout: float = 0.25):
        super().__init__()
        self.lstm = nn.LSTM(n_bins, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.squeeze(1).transpose(1, 2)  # [batch, frames, bins]
        # Under CUDA autocast cuDNN's RNNs are cast to float16 whatever the autocast dtype
        # (aten/src/ATen/cudnn/AutocastRNN.cpp): `precision: bf16` would train the LSTM in fp16 without a gradient
        # scaler. cuDNN takes bf16 RNNs only from 9.13 on, so the LSTM layers run in fp32 under every autocast, and
        # `precision_of` says so in metrics.json; the head after them still runs under autocast.
        with torch.autocast(x.device.type, enabled=False):
            outputs, _ = self.lstm(frames.float())
        return self.head(outputs.mean(dim=1))


def classifier_head(in_features: int, n_classes: int, dropout: float) -> nn.Sequential:
    """Seed 001's head: 512 - dropout - 512 - dropout - classes."""
    return nn.Sequential(
        nn.Linear(in_features, HEAD_WIDTH), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(HEAD_WIDTH, HEAD_WIDTH), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(HEAD_WIDTH, n_classes),
    )


class TransferNet(nn.Module):
    """A torchvision backbone (`resnet50` or `densenet121`) with the seeds' head, optionally pretrained and frozen.

    One-channel feature maps are repeated to three channels in `forward`, so that the stem (and pretrained weights
    for it) stay as torchvision defines them.

    Frozen blocks keep their BatchNorm layers in eval mode even while the model trains (`train()` is overridden):
    requires_grad=False stops the weights from changing, but a BatchNorm in train mode would still normalise with
    batch statistics and overwrite its running mean and variance. The frozen layers would then compute something
    else than the weights they were frozen with were trained for, and evaluation (which uses the drifted running
    stats) would disagree with training -- a classic transfer-learning bug.
    """

    def __init__(self, name: str, config: TrainConfig, n_classes: int, in_channels: int):
        super().__init__()
        self.repeat_gray = in_channels == 1
        backbone = getattr(torchvision.models, name)(weights=None)
        head_attribute, head_features = HEAD_ATTRIBUTE[name]
        if config.pretrained_weights is not None:
            load_backbone_weights(backbone, Path(config.pretrained_weights), head_prefix=f"{head_attribute}.")
        setattr(backbone, head_attribute, classifier_head(head_features, n_classes, config.dropout))
        if name == "densenet121":  # its transitions' 2 x 2 average pools would shrink a 1-long axis to 0
            for transition in ("transition1", "transition2", "transition3"):
                backbone.features.get_submodule(transition).pool = HalvingPool("avg")
        self.backbone = backbone
        self.block_names = BLOCKS[name]
        frozen = self._frozen_blocks(config)
        for index in frozen:
            for parameter in self._block_parameters(index):
                parameter.requires_grad_(False)
        # A plain list, not a ModuleList: these modules are already registered under `backbone`.
        self._frozen_norms = [m for index in frozen for module in self._block_modules(index) for m in module.modules()
                              if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.train(self.training)

    def _frozen_blocks(self, config: TrainConfig) -> list[int]:
        count = len(self.block_names)
        if config.freeze == "none":
            return []
        if config.freeze == "backbone":
            return list(range(count))
        if config.freeze == "first_k":
            if not 0 <= config.trainable_blocks <= count:
                raise ValueError(f"train.trainable_blocks: must be between 0 and the {count} blocks of {config.model} "
                                 f"({self.describe_blocks()}), got {config.trainable_blocks}")
            return list(range(config.trainable_blocks, count))
        raise ValueError(f"train.freeze: unknown policy {config.freeze!r}")

    def describe_blocks(self) -> str:
        return ", ".join(f"{i}: {'+'.join(names)}" for i, names in enumerate(self.block_names))

    def _block_modules(self, index: int) -> list[nn.Module]:
        return [self.backbone.get_submodule(name) for name in self.block_names[index]]

    def _block_parameters(self, index: int) -> Iterator[nn.Parameter]:
        for module in self._block_modules(index):
            yield from module.parameters()

    def train(self, mode: bool = True) -> TransferNet:
        super().train(mode)
        for norm in self._frozen_norms:
            norm.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat_gray:
            x = x.repeat(1, 3, 1, 1)
        return self.backbone(x)


# Published torchvision DenseNet files predate the rule against dots in module names: 'denselayer1.norm.1.weight'
# is today's 'denselayer1.norm1.weight' (torchvision renames them the same way when it loads them).
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def load_backbone_weights(backbone: nn.Module, path: Path, head_prefix: str) -> None:
    """Load a torchvision state_dict file into `backbone`, ignoring its classifier (`head_prefix`) weights.

    Every backbone tensor must be in the file and nothing else may be: a partial match would silently train a
    half-random network that reports itself as pretrained.
    """
    if not path.is_file():
        raise FileNotFoundError(f"train.pretrained_weights: no such file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file gets the same message, naming it
        raise ValueError(f"train.pretrained_weights: cannot read {path} as a torch state_dict: {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"train.pretrained_weights: {path} is not a state_dict (a mapping of names to tensors)")
    state = {_OLD_DENSENET_KEY.sub(r"\1\2", key): value for key, value in state.items()
             if not key.startswith(head_prefix)}
    expected = {key for key in backbone.state_dict() if not key.startswith(head_prefix)}
    # BatchNorm's batch counter is absent from files saved before torch 0.4.1; load_state_dict fills it in.
    missing = sorted(k for k in expected - state.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - expected)
    if missing or unexpected:
        raise ValueError(f"train.pretrained_weights: {path} does not match the {type(backbone).__name__} backbone: "
                         f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected keys "
                         f"(e.g. {unexpected[:3]})")
    try:
        backbone.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes that do not match
        raise ValueError(f"train.pretrained_weights: {path} does not fit the backbone: {err}") from err
