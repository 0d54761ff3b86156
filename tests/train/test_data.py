"""The trainer's readers: a sample read from its shard equals the stored one, images come from the right tar member,
and a damaged shard is an error naming the file."""

from __future__ import annotations

import csv
import io
import json
import shutil
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import TrainConfig
from pipeline.layout import RunLayout
from pipeline.preprocess.image_shards import read_member, split_reference
from pipeline.train.builders import build_loader
from pipeline.train.data import FeatureRows, SpectrogramImages, image_tensor, split_rows


def test_feature_rows_are_the_stored_rows_standardised_with_the_training_statistics(features):
    rows = FeatureRows(features, "logmel", "train")
    stats = json.loads(RunLayout(features).features.stats.read_text())["logmel"]
    mean, std = np.array(stats["mean"])[:, None], np.array(stats["std"])[:, None]
    index = split_rows(features, "train")
    assert len(rows) == len(index)
    for i in [0, len(index) // 2, len(index) - 1]:
        stored = np.load(RunLayout(features).features.shard(index[i]["shard"]) / "logmel.npy")[int(index[i]["row"])]
        expected = ((stored.astype(np.float32) - mean.astype(np.float32)) / std.astype(np.float32))[None]
        x, y = rows[i]
        assert x.dtype == torch.float32 and torch.equal(x, torch.from_numpy(expected))
        assert json.loads(RunLayout(features).features.labels.read_text())[int(y)] == index[i]["label"]


def test_the_loader_reads_shard_by_shard_with_the_samplers_groups(features):
    dataset = FeatureRows(features, "logmel", "train")
    sampler, loader = build_loader(dataset, TrainConfig(batch_size=4, shuffle_window=1), 2, 1, torch.device("cpu"))
    assert sampler.num_samples == len(dataset) // 2
    batches = list(loader)
    assert len(batches) == sampler.num_samples // 4 and batches[0][0].shape[:2] == (4, 1)


def test_images_come_from_the_tar_member_the_index_names(features):
    images = SpectrogramImages(features, "train", "logmel")
    index = split_rows(features, "train")
    labels = json.loads(RunLayout(features).features.labels.read_text())
    for i in [0, len(index) - 1]:
        tar, member = split_reference(index[i]["image_logmel"])
        key = member.rsplit(".", 1)[0]
        meta = json.loads(read_member(features / tar, f"{key}.json"))
        assert (meta["path"], meta["chunk"]) == (index[i]["path"], int(index[i]["chunk"]))
        pixels = np.asarray(Image.open(io.BytesIO(read_member(features / tar, member))).convert("RGB"))
        x, y = images[i]
        assert torch.equal(x, image_tensor(pixels)) and labels[int(y)] == meta["label"]


def rewrite_index(run, change) -> None:
    index_path = RunLayout(run).features.index
    with open(index_path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        change(row)
    with open(index_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_an_index_without_image_offsets_reads_the_same_through_the_tars_member_tables(tmp_path, features):
    """Indexes written before the offsets were recorded name only `tar#member`: the reader then finds each member
    in the tar's own headers."""
    run = tmp_path / "run"
    shutil.copytree(features, run, ignore=shutil.ignore_patterns("configs"))
    rewrite_index(run, lambda row: row.update(image_logmel_offset="", image_logmel_size=""))
    old, new = SpectrogramImages(run, "val", "logmel"), SpectrogramImages(features, "val", "logmel")
    assert old.index.image_at is None and new.index.image_at is not None
    assert all(torch.equal(old[i][0], new[i][0]) for i in range(len(new)))


def test_images_exported_one_file_per_chunk_read_the_same(tmp_path, features):
    """`preprocess.image_layout: files` names each image's file instead of a tar member: here the tars unpacked and
    the index rewritten to name the files, which the reader must read as it reads the members."""
    run = tmp_path / "run"
    shutil.copytree(features, run, ignore=shutil.ignore_patterns("configs"))

    def export(row: dict) -> None:
        tar, member = split_reference(row["image_logmel"])
        if not (run / "exported" / member).exists():
            with tarfile.open(run / tar) as archive:
                archive.extract(member, run / "exported", filter="data")
        row.update(image_logmel=f"exported/{member}", image_logmel_offset="", image_logmel_size="")

    rewrite_index(run, export)
    exported, packed = SpectrogramImages(run, "val", "logmel"), SpectrogramImages(features, "val", "logmel")
    assert all(torch.equal(exported[i][0], packed[i][0]) for i in range(len(packed)))


def test_a_truncated_feature_shard_is_an_error_naming_the_file(tmp_path, features):
    run = tmp_path / "run"
    shutil.copytree(features, run, ignore=shutil.ignore_patterns("configs"))
    last = split_rows(run, "train")[-1]
    array = RunLayout(run).features.shard(last["shard"]) / "logmel.npy"
    array.write_bytes(array.read_bytes()[:-10])
    rows = FeatureRows(run, "logmel", "train")
    with pytest.raises(OSError, match=str(array)):
        rows[len(rows) - 1]
