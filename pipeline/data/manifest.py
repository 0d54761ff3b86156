"""Discovery of a folder-per-class dataset into a manifest: one row per source file, with its split.

The split is made over source files, never over chunks: two chunks of one recording are nearly the same sample,
and letting them straddle train and test would report memorisation as accuracy.
"""

from __future__ import annotations

import csv
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.audio import AUDIO_SUFFIXES
from pipeline.config import SplitConfig
from pipeline.io import atomic_write_csv

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SourceFile:
    path: str
    label: str
    speaker: str
    split: str


def discover(root: Path) -> dict[str, list[Path]]:
    """Audio files under each class folder of `root`, sorted so that the split is reproducible."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder not found")
    classes = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        if files:
            classes[folder.name] = files
    if len(classes) < 2:
        raise ValueError(f"{root}: needs at least two class folders with audio files, found {sorted(classes)}")
    return classes


def split_files(files: list[Path], split: SplitConfig, label: str) -> dict[Path, str]:
    """Assign each file of one class to a split; every split gets a file when there are at least three."""
    order = list(files)
    random.Random(f"{split.seed}:{label}").shuffle(order)
    n = len(order)
    n_test = max(1, round(n * split.test)) if split.test > 0 and n >= 3 else 0
    n_val = max(1, round(n * split.val)) if split.val > 0 and n >= 3 else 0
    names = ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val)
    return dict(zip(order, names, strict=True))


def build_manifest(root: Path, split: SplitConfig) -> list[SourceFile]:
    rows = []
    for label, files in discover(root).items():
        for path, name in split_files(files, split, label).items():
            rows.append(SourceFile(str(path.resolve()), label, label, name))
    return sorted(rows, key=lambda r: r.path)


def write_manifest(rows: list[SourceFile], path: Path) -> None:
    atomic_write_csv(path, [asdict(r) for r in rows], list(SourceFile.__dataclass_fields__))


def read_manifest(path: Path) -> list[SourceFile]:
    with open(path, newline="") as f:
        return [SourceFile(**row) for row in csv.DictReader(f)]
