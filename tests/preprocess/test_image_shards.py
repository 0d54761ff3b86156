"""Spectrogram images in tar shards (WebDataset layout, `preprocess.image_layout: shards`, the default) against one
file per chunk (`files`): the same images, in a handful of files, read back by tar, tarfile and webdataset, and the
same bytes again on a rerun."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import load_config
from pipeline.data.sources import SourceFile
from pipeline.fingerprint import StaleOutputs
from pipeline.preprocess.image_shards import (
    ImageShards,
    member_table,
    read_member,
    remove_partial,
    sample_key,
    split_reference,
)
from pipeline.preprocess.run import make_tasks, preprocess
from pipeline.records import PreprocessSummary
from pipeline.stages import data_stage
from tests.conftest import FILES_PER_SPEAKER, tiny_experiment

FEATURES = ["logmel", "mfcc"]
TASKS = 4 * FILES_PER_SPEAKER // 4
"""20 files (5 per speaker), 4 per task."""


def run_with(tmp_path: Path, speech_dir: Path, **preprocess_keys) -> Path:
    config = load_config(tiny_experiment(tmp_path, speech_dir, preprocess={"image_features": FEATURES,
                                                                           **preprocess_keys}))
    data_stage(config)
    preprocess(config)
    return Path(config.run_dir)


@pytest.fixture(scope="module")
def shards_run(tmp_path_factory: pytest.TempPathFactory, speech_dir: Path) -> Path:
    return run_with(tmp_path_factory.mktemp("shards"), speech_dir)  # the default layout


@pytest.fixture(scope="module")
def files_run(tmp_path_factory: pytest.TempPathFactory, speech_dir: Path) -> Path:
    return run_with(tmp_path_factory.mktemp("files"), speech_dir, image_layout="files")


def read_index(run: Path) -> list[dict]:
    with open(run / "features" / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_each_task_writes_one_tar_per_feature_in_webdataset_layout(shards_run):
    index = read_index(shards_run)
    for feature in FEATURES:
        folder = shards_run / "images" / feature
        assert sorted(p.name for p in folder.iterdir()) == [f"shard-{k:05d}.tar" for k in range(TASKS)]
        for k in range(TASKS):
            rows = [r for r in index if r["shard"] == f"shard-{k:05d}"]
            listed = subprocess.run(["tar", "tf", str(folder / f"shard-{k:05d}.tar")], capture_output=True,
                                    text=True, check=True).stdout.splitlines()
            keys = [sample_key(f"{Path(r['path']).stem}") for r in rows]
            assert len(listed) == 2 * len(rows) > 0
            assert listed[0::2] == [name.removesuffix(".png") + ".json" for name in listed[1::2]]
            assert all(name.endswith(".png") and "." not in name.removesuffix(".png") for name in listed[1::2])
            assert all(name.startswith(key) for name, key in zip(listed[1::2], keys, strict=True))


def test_index_points_into_the_tars_with_the_images_of_the_files_layout(shards_run, files_run):
    sharded, files = read_index(shards_run), read_index(files_run)
    assert len(sharded) == len(files) > 20
    image_columns = [f"image_{f}{part}" for f in FEATURES for part in ("", "_offset", "_size")]
    for a, b in zip(sharded, files, strict=True):
        assert {k: v for k, v in a.items() if k not in image_columns} == \
            {k: v for k, v in b.items() if k not in image_columns}
        for column in image_columns[::3]:
            assert b[f"{column}_offset"] == b[f"{column}_size"] == ""  # image files: no bytes within a tar
            tar, member = split_reference(a[column])
            assert tar == f"images/{column.removeprefix('image_')}/{a['shard']}.tar"
            assert split_reference(b[column]) is None and (files_run / b[column]).is_file()
            data = read_member(shards_run / tar, member)
            assert data == (files_run / b[column]).read_bytes()  # what images.encode made, byte for byte
            with open(shards_run / tar, "rb") as f:  # the index says where those bytes lie
                f.seek(int(a[f"{column}_offset"]))
                assert f.read(int(a[f"{column}_size"])) == data
            with Image.open(io.BytesIO(data)) as image, Image.open(files_run / b[column]) as reference:
                assert image.format == "PNG" and image.size == (32, 32)
                assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(reference.convert("RGB")))
            meta = json.loads(read_member(shards_run / tar, member.removesuffix(".png") + ".json"))
            assert meta == {"label": a["label"], "split": a["split"], "path": a["path"], "chunk": int(a["chunk"])}


def test_webdataset_and_tarfile_read_a_shard_as_written(shards_run):
    import webdataset as wds

    tar = shards_run / "images" / "logmel" / "shard-00001.tar"
    rows = [r for r in read_index(shards_run) if r["shard"] == "shard-00001"]
    samples = list(wds.WebDataset(str(tar), shardshuffle=False))
    assert [s["__key__"] + ".png" for s in samples] == [split_reference(r["image_logmel"])[1] for r in rows]
    assert all(json.loads(s["json"])["label"] == r["label"] for s, r in zip(samples, rows, strict=True))
    table = member_table(tar)
    with tarfile.open(tar) as archive:
        members = archive.getmembers()
        assert {m.name: archive.extractfile(m).read() for m in members} == {m: read_member(tar, m) for m in table}
    assert {(m.mtime, m.mode, m.uname, m.gname, m.uid, m.gid) for m in members} == {(0, 0o644, "", "", 0, 0)}


def test_every_shard_mixes_the_classes(shards_run):
    labels = {}
    for row in read_index(shards_run):
        labels.setdefault(row["shard"], set()).add(row["label"])
    assert len(labels) == TASKS and all(len(found) >= 2 for found in labels.values()), labels


def test_the_summary_counts_files_and_shard_sizes_on_disk(shards_run, files_run):
    sharded = PreprocessSummary.read(shards_run / "features" / "summary.json")
    files = PreprocessSummary.read(files_run / "features" / "summary.json")
    for run, summary in ((shards_run, sharded), (files_run, files)):
        on_disk = sum(len(digests(run / folder)) for folder in ("features", "images", "gallery"))
        assert summary.files_written == on_disk
        assert summary.files_per_1000_chunks == round(1000 * on_disk / summary.chunks, 1)
        shard_sizes = [sum(f.stat().st_size for f in p.iterdir()) for p in (run / "features").glob("shard-*")]
        assert summary.feature_shard_bytes == {"mean": round(np.mean(shard_sizes)), "max": max(shard_sizes)}
    assert (sharded.image_layout, files.image_layout) == ("shards", "files")
    tars = [p.stat().st_size for p in (shards_run / "images").glob("*/shard-*.tar")]
    assert len(tars) == len(FEATURES) * TASKS
    assert sharded.image_shard_bytes == {"mean": round(np.mean(tars)), "max": max(tars)}
    assert files.image_shard_bytes is None
    # one file per chunk and feature against one tar per task and feature
    assert files.files_written - sharded.files_written == len(FEATURES) * (sharded.chunks - TASKS)
    assert sharded.files_per_1000_chunks < files.files_per_1000_chunks / 4


def test_a_summary_of_an_older_version_still_loads(shards_run):
    data = json.loads((shards_run / "features" / "summary.json").read_text())
    for key in ("files_written", "files_per_1000_chunks", "feature_shard_bytes", "image_shard_bytes", "image_layout"):
        del data[key]
    old = PreprocessSummary.from_dict(data, "old summary.json")
    assert (old.files_written, old.image_shard_bytes, old.image_layout) == (None, None, "files")


def test_rerun_rewrites_lost_tasks_byte_identical_and_skips_complete_ones(tmp_path, speech_dir):
    run = run_with(tmp_path, speech_dir, image_features=["logmel"])
    before = digests(run / "images")
    first = PreprocessSummary.read(run / "features" / "summary.json")
    features = run / "features"
    tars = run / "images" / "logmel"
    shutil.rmtree(features / "shard-00002")  # as if the task died after renaming its tar, before its shard
    shutil.rmtree(features / "shard-00003")  # and this one before either
    (tars / "shard-00003.tar").unlink()
    leftover = tars / ".shard-00001.tar.x7k2.tmp"
    leftover.write_bytes(b"half a tar from a killed worker")
    kept = {p: p.stat().st_mtime_ns for p in tars.glob("shard-*.tar") if p.name != "shard-00002.tar"}
    config = load_config(tiny_experiment(tmp_path, speech_dir, preprocess={"image_features": ["logmel"]}))
    summary = preprocess(config)
    assert summary.runs[-1].tasks == 2
    assert (summary.files_written, summary.image_shard_bytes) == (first.files_written, first.image_shard_bytes)
    assert not leftover.exists()
    assert digests(run / "images") == before  # the two redone tars byte for byte what the first run wrote
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the complete tasks' tars untouched


def test_switching_the_layout_of_a_features_folder_is_refused(tmp_path, files_run, speech_dir):
    config = load_config(tiny_experiment(tmp_path, speech_dir, preprocess={"image_features": FEATURES}))
    config.run_dir = str(files_run)  # the files run again, now with the default layout
    with pytest.raises(StaleOutputs, match=r"settings\.image_layout: 'files' -> 'shards'"):
        preprocess(config)


def test_make_tasks_mixes_labels_in_a_fixed_order():
    files = [SourceFile(f"{label}/{k:02d}.wav", label, label, "train") for label in "abcd" for k in range(16)]
    tasks = make_tasks(files, 8)
    assert [t.task_id for t in tasks] == list(range(8)) and all(len(t.files) == 8 for t in tasks)
    assert sorted(f.path for t in tasks for f in t.files) == sorted(f.path for f in files)
    assert all(len({f.label for f in t.files}) >= 3 for t in tasks)
    shuffled = random.Random(1).sample(files, len(files))
    assert make_tasks(shuffled, 8) == tasks  # the order is the files' own, not the manifest's
    # The same on every machine and Python: changing it would give a rerun's complete shards other files.
    assert [f.path for f in tasks[0].files] == ["a/08.wav", "b/14.wav", "b/15.wav", "a/09.wav", "d/02.wav",
                                                "c/01.wav", "a/11.wav", "a/01.wav"]


def test_image_shards_are_deterministic_and_leave_nothing_when_they_fail(tmp_path):
    def write(folder: Path) -> bytes:
        with ImageShards(folder, 7, ["logmel"]) as tars:
            member, offset, size = tars.write("logmel", "a_b-c0000", "jpg", b"\xff\xd8 jpeg", {"chunk": 0})
            assert member == "a_b-c0000.jpg" and size == 7
            tars.mark()
            tars.write("logmel", "a file that failed later", "jpg", b"\xff\xd8 gone", {})
            tars.rollback()  # its decoding failed: its images are cut back out
            tars.write("logmel", "ž #1", "jpg", b"\xff\xd8 more", {"path": "ž #1.wav"})
            tars.commit()
        tar = folder / "logmel" / "shard-00007.tar"
        assert member_table(tar)[member] == (offset, size)  # the offset the writer returned is where the bytes are
        return tar.read_bytes()

    assert write(tmp_path / "a") == write(tmp_path / "b")
    tar = tmp_path / "a" / "logmel" / "shard-00007.tar"
    assert read_member(tar, "ž #1.jpg") == b"\xff\xd8 more"
    assert sorted(member_table(tar)) == ["a_b-c0000.jpg", "a_b-c0000.json", "ž #1.jpg", "ž #1.json"]
    with pytest.raises(RuntimeError), ImageShards(tmp_path / "c", 0, ["logmel", "mfcc"]) as tars:
        tars.write("mfcc", "k", "png", b"png", {})
        raise RuntimeError("the task failed")
    assert [p for p in (tmp_path / "c").rglob("*") if p.is_file()] == []
    with ImageShards(tmp_path / "d", 0, ["logmel"]) as tars, pytest.raises(KeyError, match="no tar for feature 'mfcc'"):
        tars.write("mfcc", "k", "png", b"png", {})
    (tmp_path / "c" / "logmel" / ".shard-00000.tar.abc.tmp").write_bytes(b"")
    assert remove_partial(tmp_path / "c") == 1


def test_reader_errors_name_the_file_and_the_member(tmp_path):
    with ImageShards(tmp_path, 0, ["logmel"]) as tars:
        tars.write("logmel", "k", "png", b"png", {})
        tars.commit()
    tar = tmp_path / "logmel" / "shard-00000.tar"
    assert set(member_table(tar)) == {"k.json", "k.png"}
    with pytest.raises(KeyError, match=r"shard-00000.tar: no member 'x.png' \(2 members\)"):
        read_member(tar, "x.png")
    (tmp_path / "not.tar").write_bytes(b"\x89PNG not a tar" * 100)
    with pytest.raises(ValueError, match=r"not\.tar: not a readable tar file"):
        member_table(tmp_path / "not.tar")


def test_split_reference_tells_tar_members_from_image_files():
    assert split_reference("images/logmel/shard-00012.tar#a #1-c0000.png") == ("images/logmel/shard-00012.tar",
                                                                             "a #1-c0000.png")
    assert split_reference("images/logmel/train/lab#el/x#1.png") is None
    assert split_reference("") is None
