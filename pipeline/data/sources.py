"""A source file as the manifest names it, and where such names point: what every dataset source builds on.

`pipeline.data.manifest` (folder and CSV datasets, splits) and `pipeline.data.asvspoof` (protocol files) both make
`SourceFile` rows; preprocessing reads them back and opens each with `source_path`.

Rows name their file relative to the data root (`data_root`), in POSIX form, and the root is recorded once, in the
run folder's config.yaml: a manifest made on one file system then serves on another, or in a colleague's copy of the
run folder, by pointing `data.root` at the data there. Only a CSV's own reference to a file outside its folder
stays absolute.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import DataConfig


@dataclass(frozen=True)
class SourceFile:
    path: str
    """POSIX path relative to the data root (`source_path` joins them); absolute only for a CSV's file elsewhere."""
    label: str
    speaker: str
    split: str


def data_root(config: DataConfig) -> Path:
    """The folder that manifest, index and rejects paths are relative to: the CSV manifest's folder for `csv`
    (where its relative paths already start), else `data.root`."""
    if config.source != "csv":
        return Path(config.root)
    if not config.manifest:
        raise ValueError("data.source is csv but data.manifest names no CSV file")
    return Path(config.manifest).parent


def source_path(root: str | Path, row_path: str) -> Path:
    """The file a manifest row names: `row_path` under `root` (an absolute `row_path` stays itself)."""
    return Path(root) / row_path


def relative_path(root: Path, path: str | Path) -> str:
    """`path` (if relative, relative to `root`) as a manifest names it: POSIX, relative to `root` when it lies under
    it, else absolute. Normalised as text only (`./a` is `a`), never resolved, so that link names stay."""
    path = Path(os.path.normpath(path))
    if path.is_absolute():
        for base in (os.path.abspath(root), os.path.realpath(root)):
            if path.is_relative_to(base):
                return path.relative_to(base).as_posix()
    return path.as_posix()
