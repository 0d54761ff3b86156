"""Spectrogram images rendered through a colormap lookup table.

Drawing each image as a matplotlib figure (the seed method) spends most of its time on figure machinery; indexing a
256-entry colormap table with the scaled feature gives the same pixels as an axis-less `imshow` at a fraction of it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@lru_cache(maxsize=8)
def colormap_table(name: str) -> np.ndarray:
    """[256, 3] uint8 RGB table of a matplotlib colormap."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError as err:
        raise ValueError(f"preprocess.colormap: unknown matplotlib colormap {name!r}") from err
    return (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def render(features: torch.Tensor, size: int, colormap: str) -> np.ndarray:
    """[n, bins, frames] -> [n, size, size, 3] uint8 images, low bins at the bottom, each scaled to its own range."""
    x = features.float().unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).squeeze(1)
    low = x.amin(dim=(1, 2), keepdim=True)
    high = x.amax(dim=(1, 2), keepdim=True)
    scaled = (x - low) / (high - low).clamp_min(1e-6)
    index = (scaled.flip(1) * 255).round().to(torch.uint8).numpy()
    return colormap_table(colormap)[index]


SUFFIXES = {"png": "png", "jpeg": "jpg"}


def save(path: Path, image: np.ndarray, image_format: str) -> None:
    """PNG with fast compression (the pixels are the same at any level), or JPEG at quality 90."""
    from pipeline.io import atomic_write

    options = {"compress_level": 1} if image_format == "png" else {"quality": 90}
    atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format=image_format.upper(), **options))
