"""Distributed audio classifier pipeline: Dask preprocessing, PyTorch DDP training, scaling reports."""

from importlib import metadata

try:
    __version__ = metadata.version("audio-ddp-pipeline")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"

__all__ = ["Experiment", "__version__"]


def __getattr__(name: str):
    """`pipeline.Experiment` on first use, so `import pipeline` stays light (no torch, no Dask)."""
    if name == "Experiment":
        from pipeline.api import Experiment

        return Experiment
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
