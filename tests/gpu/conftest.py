"""Tests of the CUDA path: marked `gpu`, skipped where torch sees no GPU, so CI on CPU collects and skips them.

On a GPU machine: `pytest -m gpu` runs just these; `pytest` runs them beside the CPU tests, which pin
`train.device: cpu` and so give the same results with or without a GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark this folder's tests `gpu`, and skip them without CUDA (the hook sees every item of the session)."""
    skip = pytest.mark.skip(reason="needs CUDA: torch sees no GPU here")
    for item in items:
        if HERE not in Path(item.path).parents:
            continue
        item.add_marker(pytest.mark.gpu)
        if not torch.cuda.is_available():
            item.add_marker(skip)


def gpus() -> int:
    """GPUs torch sees; tests that need several skip with fewer."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0
