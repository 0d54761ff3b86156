"""Classifiers. `cnn` is seed 000's shape: stacked convolutions with max pooling, average pooling, a linear head."""

from __future__ import annotations

import torch
from torch import nn


class SpectrogramCNN(nn.Module):
    """A small CNN over a [batch, 1, bins, frames] feature map; one logit per class."""

    def __init__(self, n_classes: int, width: int = 32, dropout: float = 0.3):
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                                 nn.ReLU(inplace=True), nn.MaxPool2d(2))

        self.features = nn.Sequential(block(1, width // 2), block(width // 2, width), block(width, 2 * width),
                                      block(2 * width, 2 * width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * width, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


def build_model(name: str, n_classes: int) -> nn.Module:
    if name == "cnn":
        return SpectrogramCNN(n_classes)
    raise ValueError(f"train.model: unknown model {name!r}")
