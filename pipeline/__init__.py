"""Distributed audio classifier pipeline: Dask preprocessing, PyTorch DDP training, scaling reports."""

from importlib import metadata

try:
    __version__ = metadata.version("audio-ddp-pipeline")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"
