"""What the trainer reads: feature rows from the `.npy` shards, or spectrogram images from the tar shards, one
sample at a time, so that a rank's memory does not grow with the dataset.

A rank holds only the split's index as a few integers per chunk (`SplitIndex`). A sample is read when the loader
asks for it: one `os.pread` of its row of the float16 feature array, or of its PNG/JPEG member in the tar. Reads go
through the page cache, which every rank of a node shares, and never through a private copy or a memory map that
would count the data in each rank's RSS. When a reader first opens a shard file it asks the kernel to read the whole
file ahead (`POSIX_FADV_WILLNEED`): the file system sees one sequential read per shard, and `ShardSampler`'s order
keeps the open shards few.

Features are normalised per bin with the training statistics computed during preprocessing. Images are normalised
with ImageNet's mean and std, which is what the pretrained torchvision backbones expect. The old one-file-per-chunk
image layout (`preprocess.image_layout: files`) is read too.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pipeline.layout import RunLayout
from pipeline.preprocess.image_shards import member_table, split_reference

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_labels(run_dir: Path) -> list[str]:
    return json.loads(RunLayout(run_dir).features.labels.read_text())


@dataclass
class SplitIndex:
    """The chunks of one split as compact arrays, in index order (which groups them by shard)."""

    shards: list[str]
    """Shard folder names, each once, in index order."""
    shard_of: np.ndarray
    """Per chunk: its shard's position in `shards`."""
    row: np.ndarray
    """Per chunk: its row in the shard."""
    target: np.ndarray
    """Per chunk: its label's position in labels.json."""
    images: list[str] | None = None
    """Per chunk: its image column (`images/...png` or `images/...tar#member`), when asked for and the index does
    not say where each image lies in its tar."""
    image_tars: list[str] | None = None
    """Per shard: its image tar (relative to the run folder), when the index gives each image's offset and size."""
    image_at: np.ndarray | None = None
    """Per chunk: [offset, size] of its image in its shard's tar (with `image_tars`)."""

    def __len__(self) -> int:
        return len(self.row)


def read_split_index(run_dir: Path, split: str, image_column: str | None = None) -> SplitIndex:
    """The `split` rows of features/index.csv, read row by row so that only the arrays stay in memory."""
    index = RunLayout(run_dir).features.index
    if not index.is_file():
        raise FileNotFoundError(f"{index}: no features yet; run `pipeline preprocess CONFIG` first")
    label_of = {label: k for k, label in enumerate(read_labels(run_dir))}
    shards: dict[str, int] = {}
    shard_of, rows, targets, images = [], [], [], ImageColumn(image_column, index) if image_column else None
    with open(index, newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] != split:
                continue
            shard_of.append(shards.setdefault(row["shard"], len(shards)))
            rows.append(int(row["row"]))
            targets.append(label_of[row["label"]])
            if images:
                images.add(row, shard_of[-1])
    if not rows:
        raise ValueError(f"{index}: the {split!r} split has no chunks")
    split_index = SplitIndex(list(shards), np.array(shard_of, np.int32), np.array(rows, np.int64),
                             np.array(targets, np.int64))
    if images:
        images.fill(split_index)
    return split_index


class ImageColumn:
    """Collects one image column while the index is read: per shard its tar and per chunk two integers when the
    index says where each image lies (tar shards), else each chunk's reference (image files, older indexes)."""

    def __init__(self, column: str, index: Path) -> None:
        self.column, self.index = column, index
        self.tars: list[str] = []
        self.at: list[tuple[int, int]] = []
        self.references: list[str] = []

    def add(self, row: dict, shard: int) -> None:
        reference = row.get(self.column)
        if not reference:
            raise ValueError(f"{self.index}: chunks without {self.column[len('image_'):]} images (preprocess with "
                             f"`preprocess.images: true` and that feature in `preprocess.image_features` to train "
                             f"on them), e.g. {row['path']}")
        in_tar = split_reference(reference)
        if in_tar and row.get(f"{self.column}_offset"):
            if shard == len(self.tars):
                self.tars.append(in_tar[0])
            self.at.append((int(row[f"{self.column}_offset"]), int(row[f"{self.column}_size"])))
        else:
            self.references.append(reference)

    def fill(self, split_index: SplitIndex) -> None:
        if self.references and self.at:
            raise ValueError(f"{self.index}: {self.column} gives the bytes of some images and not of others")
        if self.at:
            split_index.image_tars, split_index.image_at = self.tars, np.array(self.at, np.int64)
        else:
            split_index.images = self.references


class Standardise:
    """Per-bin standardisation with one feature's training statistics (`stats.json`): [..., bins, frames]."""

    def __init__(self, stats: dict) -> None:
        self.mean = torch.tensor(stats["mean"], dtype=torch.float32).view(-1, 1)
        self.std = torch.tensor(stats["std"], dtype=torch.float32).view(-1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


def normalise(x: torch.Tensor, stats: dict) -> torch.Tensor:
    """[n, bins, frames] -> [n, 1, bins, frames], standardised per bin with the training split's statistics."""
    return Standardise(stats)(x).unsqueeze(1).contiguous()


def split_rows(run_dir: Path, split: str) -> list[dict]:
    """index.csv rows of one split, in index order (for inspection and tests; training reads `SplitIndex`)."""
    index = RunLayout(run_dir).features.index
    with open(index, newline="") as f:
        return [row for row in csv.DictReader(f) if row["split"] == split]


class ShardFiles:
    """Open files of one reader, by path, each read ahead once: opened lazily, so that each loader worker opens its
    own after the fork, and at most `MAX_OPEN` at a time (the sampler's order needs only a few)."""

    MAX_OPEN = 64

    def __init__(self) -> None:
        self.fds: dict[Path, int] = {}
        self.pid = os.getpid()

    def fd(self, path: Path) -> int:
        if self.pid != os.getpid():  # a forked loader worker: its parent's descriptors are not its own to cache
            self.fds, self.pid = {}, os.getpid()
        if path not in self.fds:
            if len(self.fds) >= self.MAX_OPEN:
                os.close(self.fds.pop(next(iter(self.fds))))
            fd = os.open(path, os.O_RDONLY)
            if hasattr(os, "posix_fadvise"):  # Linux; elsewhere the file system's own read-ahead
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            self.fds[path] = fd
        return self.fds[path]

    def read(self, path: Path, offset: int, size: int) -> bytes:
        data = os.pread(self.fd(path), size, offset)
        if len(data) != size:
            raise OSError(f"{path}: {size} bytes expected at offset {offset}, got {len(data)} (truncated shard?)")
        return data


@dataclass(frozen=True)
class NpyRows:
    """Where the rows of one shard's `<feature>.npy` lie: each row is one contiguous block after the header."""

    offset: int
    row_shape: tuple[int, ...]
    dtype: np.dtype
    rows: int

    @classmethod
    def of(cls, path: Path) -> NpyRows:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(f)
            if fortran_order or len(shape) < 2:
                raise ValueError(f"{path}: expected a C-ordered [chunks, ...] array, got shape {shape}")
            return cls(f.tell(), tuple(shape[1:]), dtype, shape[0])

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape)) * self.dtype.itemsize


class FeatureRows(Dataset):
    """One feature of one split as [1, bins, frames] float32 tensors, standardised per bin."""

    def __init__(self, run_dir: Path, feature: str, split: str) -> None:
        features = RunLayout(run_dir).features
        stats = json.loads(features.stats.read_text())
        if feature not in stats:
            raise ValueError(f"{features.folder}: no training statistics for feature {feature!r}")
        self.index = read_split_index(run_dir, split)
        self.shard_of, self.targets = self.index.shard_of, torch.from_numpy(self.index.target)
        self.paths = [features.shard(name) / f"{feature}.npy" for name in self.index.shards]
        self.layouts = [NpyRows.of(path) for path in self.paths]
        last_row = np.full(len(self.paths), -1)
        np.maximum.at(last_row, self.shard_of, self.index.row)
        for path, layout, last in zip(self.paths, self.layouts, last_row, strict=True):
            if last >= layout.rows:
                raise ValueError(f"{path}: index.csv names row {last}, past its {layout.rows} rows")
        self.standardise = Standardise(stats[feature])
        self.files = ShardFiles()

    def __len__(self) -> int:
        return len(self.index)

    def rows(self, i: int) -> np.ndarray:
        """Sample i as stored: [bins, frames] float16."""
        shard = self.shard_of[i]
        layout = self.layouts[shard]
        data = self.files.read(self.paths[shard], layout.offset + int(self.index.row[i]) * layout.row_bytes,
                               layout.row_bytes)
        return np.frombuffer(data, layout.dtype).reshape(layout.row_shape)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.standardise(torch.from_numpy(self.rows(i).copy())).unsqueeze(0), self.targets[i]


def image_tensor(pixels: np.ndarray) -> torch.Tensor:
    """RGB pixels [..., H, W, 3] (uint8) -> [..., 3, H, W] float, normalised with ImageNet's mean and std."""
    pixels = pixels if pixels.flags.writeable else pixels.copy()  # np.asarray of a PIL image is read-only
    x = torch.from_numpy(np.ascontiguousarray(pixels)).float().div(255.0).movedim(-1, -3)
    return (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


class SpectrogramImages(Dataset):
    """The images of one feature and split as [3, H, W] float tensors, read from tar shards (or per-chunk files)."""

    def __init__(self, run_dir: Path, split: str, feature: str) -> None:
        self.root = RunLayout(run_dir).root
        self.index = read_split_index(run_dir, split, image_column=f"image_{feature}")
        self.shard_of, self.targets = self.index.shard_of, torch.from_numpy(self.index.target)
        self.members: dict[Path, dict[str, tuple[int, int]]] = {}
        self.files = ShardFiles()

    def __len__(self) -> int:
        return len(self.index)

    def encoded(self, i: int) -> bytes:
        """Sample i's image file as stored (PNG or JPEG bytes)."""
        if self.index.image_at is not None:
            offset, size = self.index.image_at[i]
            return self.files.read(self.root / self.index.image_tars[self.shard_of[i]], int(offset), int(size))
        reference = self.index.images[i]
        in_tar = split_reference(reference)
        if in_tar is None:
            return (self.root / reference).read_bytes()
        tar, member = in_tar
        path = self.root / tar
        if path not in self.members:
            self.members[path] = member_table(path)
        if member not in self.members[path]:
            raise ValueError(f"{path}: no member {member!r}, which index.csv names")
        offset, size = self.members[path][member]
        return self.files.read(path, offset, size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        with Image.open(io.BytesIO(self.encoded(i))) as image:
            pixels = np.asarray(image.convert("RGB"))
        return image_tensor(pixels), self.targets[i]


def load_split(run_dir: Path, feature: str, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """([n, 1, bins, frames] float32 features, [n] int64 labels, label names) of one split, in index order, all in
    memory: for small splits (tests, `pipeline bench`), never for training."""
    rows = FeatureRows(run_dir, feature, split)
    return torch.stack([rows[i][0] for i in range(len(rows))]), rows.targets, read_labels(run_dir)


def build_dataset(run_dir: Path, input_kind: str, feature: str, split: str) -> tuple[Dataset, int]:
    """(dataset, input channels) of one split for `train.input`."""
    if input_kind == "images":
        return SpectrogramImages(run_dir, split, feature), 3
    return FeatureRows(run_dir, feature, split), 1
