"""Names of one recording (symbolic links, hard links, identical copies) and paths relative to the data root, on
real files: a recording never lands in two splits, and a run folder names no path of the machine it was made on."""

import csv
import hashlib
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.config import DataConfig, SplitConfig, load_config
from pipeline.data.manifest import assign_splits, folder_sources, manifest_and_summary, manifest_for
from pipeline.preprocess.run import preprocess
from pipeline.stages import data_stage
from tests.conftest import tiny_experiment

RATE = 16000


def tone(path: Path, number: int, seconds: float = 0.1) -> Path:
    """A sine of its own pitch: every file has distinct content but, at one length, the same size as the others
    (so that content hashing, not only the size, must tell them apart)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * RATE)) / RATE
    sf.write(path, 0.3 * np.sin(2 * np.pi * (200 + 37 * number) * t), RATE, subtype="PCM_16")
    return path


def splits_of_groups(rows, group_of) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for r in rows:
        found.setdefault(group_of(r.path), set()).add(r.split)
    return found


def test_a_linked_copy_is_split_by_recording_with_the_configured_fractions(tmp_path):
    """20 recordings per class, each with 3 more names (links, relative and absolute): 80 names per class."""
    root = tmp_path / "data"
    for c, label in enumerate(("cat", "dog")):
        for i in range(20):
            real = tone(root / label / f"{i:02d}.wav", 20 * c + i)
            (root / label / f"link-a-{i:02d}.wav").symlink_to(real.name)
            (root / label / "more" / f"link-b-{i:02d}.wav").parent.mkdir(exist_ok=True)
            (root / label / "more" / f"link-b-{i:02d}.wav").symlink_to(f"../{real.name}")
            (root / label / f"link-c-{i:02d}.wav").symlink_to(real)  # absolute target
    config = DataConfig(source="folder", root=str(root), split=SplitConfig(val=0.15, test=0.15, seed=0))
    rows, summary = manifest_and_summary(config)

    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.wav"))
    assert sorted(r.path for r in rows) == names and len(names) == 160  # every name the user gave, as given
    recording = {r.path: os.path.realpath(root / r.path) for r in rows}
    by_group = splits_of_groups(rows, recording.get)
    assert len(by_group) == 40 and all(len(s) == 1 for s in by_group.values())
    groups_per_split = Counter((label, split) for label, _, split in {(r.label, recording[r.path], r.split)
                                                                        for r in rows})
    for label in ("cat", "dog"):  # 70/15/15% of the 20 recordings, every name with its recording
        assert [groups_per_split[(label, s)] for s in ("train", "val", "test")] == [14, 3, 3]
        assert [sum(r.label == label and r.split == s for r in rows) for s in ("train", "val", "test")] == [56, 12, 12]
    assert (summary.duplicate_files, summary.duplicate_groups, summary.conflicts) == (160, 40, 0)
    assert manifest_for(config) == rows  # reproducible, and the old signature still works

    # Split name by name (what resolving, or ignoring, the links amounted to), recordings straddle the splits.
    naive = assign_splits(folder_sources(root), config.split)
    assert any(len(s) > 1 for s in splits_of_groups(naive, recording.get).values())


def test_identical_copies_are_one_recording_even_across_speakers(tmp_path):
    root = tmp_path / "data"
    n = 0
    for label in ("a", "b"):
        for s in range(5):
            for i in range(2):
                tone(root / label / f"s{s}" / f"{i}.wav", n)
                n += 1
    shutil.copy(root / "a/s0/0.wav", root / "a/s1/copy of s0.wav")  # another speaker's folder: a conflict
    shutil.copy(root / "b/s2/1.wav", root / "b/s2/again.wav")
    os.link(root / "b/s3/0.wav", root / "b/s3/hard link.wav")  # one inode, two names
    for by in ("file", "speaker"):
        config = DataConfig(source="folder", root=str(root), split=SplitConfig(val=0.2, test=0.2, seed=1, by=by))
        rows, summary = manifest_and_summary(config)
        split = {r.path: r.split for r in rows}
        assert len(rows) == 23
        assert split["a/s1/copy of s0.wav"] == split["a/s0/0.wav"]  # the group follows its first name
        assert split["b/s2/again.wav"] == split["b/s2/1.wav"]
        assert split["b/s3/hard link.wav"] == split["b/s3/0.wav"]
        assert (summary.duplicate_files, summary.duplicate_groups) == (6, 3)  # same-size tones are not grouped
        assert summary.conflicts == (1 if by == "speaker" else 0)


def test_csv_names_stay_relative_and_its_own_split_may_not_split_a_recording(tmp_path):
    data = tmp_path / "lists"
    for i in range(6):
        tone(data / "audio" / f"{i}.wav", i)
    (data / "audio" / "link.wav").symlink_to("0.wav")
    elsewhere = tone(tmp_path / "elsewhere.wav", 9)
    listing = data / "m.csv"
    listing.write_text("path,label\n" + "".join(f"./audio/{i}.wav,{'ab'[i % 2]}\n" for i in range(6))
                       + f"{data / 'audio' / 'link.wav'},a\n{elsewhere},b\n")
    rows, summary = manifest_and_summary(DataConfig(source="csv", manifest=str(listing),
                                                    split=SplitConfig(val=0.25, test=0.25)))
    split = {r.path: r.split for r in rows}
    assert set(split) == {f"audio/{i}.wav" for i in range(6)} | {"audio/link.wav", str(elsewhere)}
    assert split["audio/link.wav"] == split["audio/0.wav"] and summary.duplicate_groups == 1

    listing.write_text("path,label,split\naudio/0.wav,a,test\naudio/link.wav,a,train\naudio/1.wav,b,val\n")
    with pytest.raises(ValueError, match=r"m\.csv: audio/0\.wav \(test\) and audio/link\.wav \(train\) are one "
                                         r"recording .* in two splits"):
        manifest_for(DataConfig(source="csv", manifest=str(listing)))


def small_dataset(root: Path) -> Path:
    """Two classes of 1.2 s tones (one 1 s chunk each), a second name (relative link) of one of them, and the
    entries preprocessing must reject: not audio, a dangling link, a directory named like audio."""
    for c, label in enumerate(("high", "low")):
        for i in range(4):
            tone(root / label / f"{i}.wav", 10 * c + i, seconds=1.2)
    (root / "high" / "second name.wav").symlink_to("0.wav")
    (root / "low" / "not audio.wav").write_text("just text")
    (root / "low" / "dangling.wav").symlink_to("missing.wav")
    (root / "low" / "folder.wav").mkdir()
    return root


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def run_files(run: Path) -> dict[str, list[dict]]:
    return {name: read_csv(run / name) for name in ("manifest.csv", "features/index.csv", "features/rejects.csv")}


@pytest.mark.parametrize("source", ["folder", "csv"])
def test_a_run_folder_names_no_path_of_this_machine(tmp_path, source, capsys):
    data = small_dataset(tmp_path / "data")
    bad = {"low/not audio.wav", "low/dangling.wav", "low/folder.wav"}
    if source == "csv":  # the CSV in the data folder: its folder is the root; it can only list files
        names = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.wav") if p.is_file())
        (data / "list.csv").write_text("path,label\n" + "".join(f"{n},{n.split('/')[0]}\n" for n in names))
        bad = {"low/not audio.wav"}
    keys = {"source": "csv", "manifest": str(data / "list.csv")} if source == "csv" else {}
    config = load_config(tiny_experiment(tmp_path / "exp", data, data=keys))
    data_stage(config)
    assert "2 names share a recording with another (1 recordings, 0 with differing" in capsys.readouterr().out
    summary = preprocess(config)
    run = Path(config.run_dir)
    found = run_files(run)
    assert len(found["manifest.csv"]) == 9 + len(bad) and summary.chunks == len(found["features/index.csv"]) == 9
    for name, rows in found.items():
        assert rows and not any(Path(r["path"]).is_absolute() for r in rows), name
        assert str(tmp_path) not in (run / name).read_text(), name  # nor in a reject's reason
    reasons = {r["path"]: r["reason"] for r in found["features/rejects.csv"]}
    assert set(reasons) == bad and reasons["low/not audio.wav"].startswith("low/not audio.wav: not decodable audio")
    if source == "folder":
        assert reasons["low/dangling.wav"].startswith("low/dangling.wav: dangling symbolic link to missing.wav")
        assert reasons["low/folder.wav"] == "low/folder.wav: is a directory, not an audio file"
    split = {r["path"]: r["split"] for r in found["manifest.csv"]}
    assert split["high/second name.wav"] == split["high/0.wav"]


def test_moving_the_data_and_the_run_folder_still_preprocesses(tmp_path):
    """A colleague's copy: the manifest made here, the data copied to another folder (the original gone), data.root
    pointed there. The outputs are those of the original run, byte for byte."""
    first = tmp_path / "first"
    config = load_config(tiny_experiment(first, small_dataset(first / "data")))
    data_stage(config)
    preprocess(config)
    moved = tmp_path / "elsewhere" / "data"
    shutil.copytree(first / "data", moved, symlinks=True)
    shutil.rmtree(first / "data")
    again = load_config(tiny_experiment(tmp_path / "copy", moved))
    Path(again.run_dir).mkdir(parents=True)
    shutil.copy(Path(config.run_dir) / "manifest.csv", Path(again.run_dir) / "manifest.csv")
    summary = preprocess(again)
    assert summary.chunks == 9 and summary.rejected_files == 3
    before, after = Path(config.run_dir), Path(again.run_dir)
    for name in ("features/index.csv", "features/rejects.csv"):
        assert (after / name).read_text() == (before / name).read_text(), name

    def image_files(run: Path) -> dict[str, str]:
        return {p.relative_to(run).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted((run / "images").rglob("*")) if p.is_file()}

    assert image_files(before) and image_files(after) == image_files(before)  # the tars are byte-identical
