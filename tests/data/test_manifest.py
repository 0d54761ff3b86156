import csv
from collections import Counter
from pathlib import Path

import pytest

from pipeline.config import DataConfig, SplitConfig
from pipeline.data.manifest import (
    build_manifest,
    folder_sources,
    manifest_for,
    read_csv_sources,
    read_manifest,
    speaker_split_sizes,
    write_manifest,
)


def test_every_class_gets_every_split_and_split_is_reproducible(speech_dir, tmp_path):
    rows = build_manifest(speech_dir, SplitConfig(val=0.2, test=0.2, seed=3))
    assert Counter((r.label, r.split) for r in rows) == Counter(
        {(label, split): n for label in ("cs-m", "cs-v", "nl-m", "nl-v")
         for split, n in (("train", 3), ("val", 1), ("test", 1))})
    write_manifest(rows, tmp_path / "m.csv")
    assert read_manifest(tmp_path / "m.csv") == rows
    assert build_manifest(speech_dir, SplitConfig(val=0.2, test=0.2, seed=3)) == rows
    assert build_manifest(speech_dir, SplitConfig(val=0.2, test=0.2, seed=4)) != rows


def test_needs_two_classes(tmp_path):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "a.wav").write_bytes(b"")
    with pytest.raises(ValueError, match="at least two class folders"):
        build_manifest(tmp_path, SplitConfig())


def make_folder_dataset(root, layout):
    """Empty audio files at the given relative paths (discovery and splitting never decode them)."""
    for relative in layout:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return root


def splits_of_speakers(rows):
    found = {}
    for r in rows:
        found.setdefault(r.speaker, set()).add(r.split)
    return found


def test_speaker_is_the_subfolder_of_the_class_folder(tmp_path):
    root = make_folder_dataset(tmp_path, ["a/x.wav", "a/alice/1.wav", "a/alice/deeper/2.wav", "b/bob/3.wav"])
    assert {(Path(r.path).name, r.label, r.speaker) for r in folder_sources(root)} == {
        ("x.wav", "a", "a"), ("1.wav", "a", "alice"), ("2.wav", "a", "alice"), ("3.wav", "b", "bob")}


def test_speaker_split_keeps_every_speaker_in_one_split(tmp_path):
    layout = [f"{label}/{label}{s}/{i}.wav" for label, n in (("five", 5), ("three", 3), ("two", 2))
              for s in range(n) for i in range(4)]
    root = make_folder_dataset(tmp_path, layout + ["five/shared/0.wav", "three/shared/0.wav"])
    split = SplitConfig(val=0.2, test=0.2, seed=0, by="speaker")
    rows = build_manifest(root, split)
    assert all(len(names) == 1 for names in splits_of_speakers(rows).values())
    per_label = Counter((r.label, r.split) for r in {(r.label, r.speaker, r.split): r for r in rows}.values())
    # six speakers: 1 test, 1 val, 4 train; four: 1/1/2; two: one train and one test, none in val
    assert per_label == Counter({("five", "test"): 1, ("five", "val"): 1, ("five", "train"): 4,
                                 ("three", "test"): 1, ("three", "val"): 1, ("three", "train"): 2,
                                 ("two", "test"): 1, ("two", "train"): 1})
    assert build_manifest(root, split) == rows
    assert any(build_manifest(root, SplitConfig(val=0.2, test=0.2, seed=s, by="speaker")) != rows
               for s in range(1, 4))


@pytest.mark.parametrize(("n", "val", "test", "expected"), [
    (2, 0.15, 0.15, (1, 0, 1)), (2, 0.15, 0.0, (1, 1, 0)), (3, 0.15, 0.15, (1, 1, 1)), (3, 0.5, 0.4, (1, 1, 1)),
    (10, 0.2, 0.2, (6, 2, 2)), (4, 0.0, 0.0, (4, 0, 0))])
def test_speaker_split_sizes(n, val, test, expected):
    sizes = speaker_split_sizes(n, SplitConfig(val=val, test=test, by="speaker"))
    assert (sizes["train"], sizes["val"], sizes["test"]) == expected


def test_speaker_split_needs_speakers(speech_dir):
    # the demo folder has one speaker per class (files directly in the class folders)
    with pytest.raises(ValueError, match="label 'cs-m' has a single speaker"):
        build_manifest(speech_dir, SplitConfig(by="speaker"))


def test_manifest_for_a_folder_split_by_speaker(tmp_path):
    root = make_folder_dataset(tmp_path / "d", [f"{c}/s{s}/{i}.wav" for c in "ab" for s in range(3) for i in range(2)])
    rows = manifest_for(DataConfig(source="folder", root=str(root), split=SplitConfig(by="speaker")))
    assert Counter(r.split for r in rows) == Counter({"train": 4, "val": 4, "test": 4})


def write_csv(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_manifest_with_relative_paths_and_odd_names(tmp_path):
    names = ["with space.wav", 'quote"d.wav', "čeština ü.wav", "comma,name.wav"]
    make_folder_dataset(tmp_path / "audio", names + ["sub/deep.wav"])
    (tmp_path / "abs.wav").write_bytes(b"")
    (tmp_path / "lists").mkdir()
    csv_path = tmp_path / "lists" / "m.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:  # paths relative to the CSV's folder
        writer = csv.writer(f)
        writer.writerow(["path", "label", "speaker", "extra"])
        writer.writerows([f"../audio/{n}", "yes" if i % 2 else "no", f"s{i}", "x"] for i, n in enumerate(names))
        writer.writerows([["../audio/sub/deep.wav", "yes", "", "x"], [tmp_path / "abs.wav", "no", "s9", "x"]])
    rows, complete = read_csv_sources(csv_path)
    assert not complete and all(r.split == "" for r in rows)
    by_name = {Path(r.path).name: r for r in rows}
    assert set(by_name) == set(names) | {"deep.wav", "abs.wav"}
    assert by_name["čeština ü.wav"].path == "../audio/čeština ü.wav"  # relative to the CSV's folder, as given
    assert by_name["abs.wav"].path == str(tmp_path / "abs.wav")  # outside that folder: the user's own reference
    assert by_name['quote"d.wav'].speaker == "s1"
    assert by_name["deep.wav"].speaker == by_name["deep.wav"].path  # no speaker: the file is its own speaker
    config = DataConfig(source="csv", manifest=str(csv_path), split=SplitConfig(val=0.25, test=0.25))
    assert {r.split for r in manifest_for(config)} == {"train", "val", "test"}


def test_csv_split_column_is_used_when_complete(tmp_path):
    make_folder_dataset(tmp_path, ["1.wav", "2.wav", "3.wav"])
    csv_path = write_csv(tmp_path / "m.csv", "label,split,path,speaker\na,test,1.wav,x\nb,train,2.wav,y\n"
                                             "b,val,3.wav,z\n")
    rows = manifest_for(DataConfig(source="csv", manifest=str(csv_path), split=SplitConfig(by="speaker")))
    assert [(Path(r.path).name, r.split) for r in rows] == [("1.wav", "test"), ("2.wav", "train"), ("3.wav", "val")]
    clash = write_csv(tmp_path / "c.csv", "path,label,speaker,split\n1.wav,a,x,test\n2.wav,b,x,train\n")
    with pytest.raises(ValueError, match=r"c\.csv: split\.by speaker, but speaker 'x' has files in splits test, train"):
        manifest_for(DataConfig(source="csv", manifest=str(clash), split=SplitConfig(by="speaker")))


@pytest.mark.parametrize(("text", "need_speakers", "message"), [
    ("path,speaker\n1.wav,x\n", False, r"line 1: missing column 'label'"),
    ("path,label\n1.wav,a\n", True, r"line 1: missing column 'speaker'"),
    ("path,label\n1.wav,a\n2.wav,\n", False, r"line 3: column 'label': empty"),
    ("path,label\n1.wav,a\n,b\n", False, r"line 3: column 'path': empty"),
    ("path,label,split\n1.wav,a,train\n2.wav,b,testing\n", False, r"line 3: column 'split': 'testing' is not one of"),
    ("path,label\n1.wav,a\nnope.wav,b\n", False, r"line 3: column 'path': file not found: .*nope\.wav"),
    ('path,label\n1.wav,a\n"new\nline.wav",b\n2.wav,\n', False, r"line 5: column 'label': empty"),
    ("path,label\n1.wav,a\n./1.wav,b\n", False, r"line 3: column 'path': .*1\.wav is already listed on line 2"),
    ("path,label,speaker\n1.wav,a,x\n2.wav,b,\n", True, r"line 3: column 'speaker': empty"),
])
def test_csv_errors_name_file_line_and_column(tmp_path, text, need_speakers, message):
    make_folder_dataset(tmp_path, ["1.wav", "2.wav", "new\nline.wav"])
    csv_path = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(ValueError, match=rf"bad\.csv: {message}"):
        read_csv_sources(csv_path, need_speakers=need_speakers)


def test_csv_needs_two_labels_and_a_manifest(tmp_path):
    make_folder_dataset(tmp_path, ["1.wav"])
    with pytest.raises(ValueError, match=r"one\.csv: needs at least two labels"):
        read_csv_sources(write_csv(tmp_path / "one.csv", "path,label\n1.wav,a\n"))
    with pytest.raises(ValueError, match="data.manifest names no CSV file"):
        manifest_for(DataConfig(source="csv"))
    with pytest.raises(FileNotFoundError, match="missing.csv: CSV manifest not found"):
        manifest_for(DataConfig(source="csv", manifest=str(tmp_path / "missing.csv")))
