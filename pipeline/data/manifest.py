"""Discovery of a dataset into a manifest: one row per source file, with its label, speaker and split.

The split is made over source files, never over chunks: two chunks of one recording are nearly the same sample,
and letting them straddle train and test would report memorisation as accuracy. With `split.by: speaker` it is made
over speakers, so that val and test hold only voices the model never heard in training.

Where the rows come from (`manifest_for`):

- `folder` (and `demo`, `spoof`, which build such a folder first): one sub-folder per class under `root`. A file
  directly in its class folder has the class name as speaker; a file in a sub-folder of its class folder
  (`<root>/<class>/<speaker>/.../<file>`) has that first sub-folder's name as speaker, so a folder dataset can be
  split by speaker.
- `csv`: a CSV file with columns `path` and `label`, optionally `speaker` and `split` (see `read_csv_sources`).
- `asvspoof`: an ASVspoof 2019-style protocol file naming the files of the audio folder `root`, with their speaker
  and bonafide/spoof key (see `pipeline.data.asvspoof`).

A folder lists what is there, so an entry named like audio that is no readable file (a dangling link, a directory
`x.wav`) is listed too and preprocessing rejects it with its reason. A CSV or protocol claims that its files exist,
so one that does not is an error naming the line: the list and the data disagree, e.g. a wrong `root`.

Rows (`SourceFile`, see `pipeline.data.sources`) name their file relative to the data root (`data_root`), in POSIX
form, so that a manifest made on one file system serves on another.

Names are kept as the user gave them, links included: class folders are often built from symbolic links rather
than copies. Several names of one recording (links, hard links, identical copies) form a group that is split as one
unit (`recording_groups`), so that no recording is heard in training and tested on too.
"""

from __future__ import annotations

import csv
import hashlib
import random
import stat
from collections import Counter
from collections.abc import Hashable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TypeVar

from pipeline.audio import AUDIO_SUFFIXES
from pipeline.config import DataConfig, SplitConfig
from pipeline.data.asvspoof import asvspoof_sources
from pipeline.data.sources import SourceFile, data_root, relative_path, source_path
from pipeline.io import atomic_write_csv

SPLITS = ("train", "val", "test")
T = TypeVar("T", bound=Hashable)


@dataclass(frozen=True)
class ManifestSummary:
    """Several names of one recording found in a dataset: worth a line of the data summary, since a linked or copied
    dataset that the user thinks has N recordings has fewer."""

    duplicate_files: int
    """Files that share their recording with at least one other file of the manifest."""
    duplicate_groups: int
    """Recordings that have more than one name."""
    conflicts: int
    """Groups whose names disagree on the label (or, split by speaker, on the speaker); the whole group follows its
    first name."""


def discover(root: Path) -> dict[str, list[Path]]:
    """Entries named like audio under each class folder of `root`, sorted so that the split is reproducible.

    Not only regular files: a dangling link or a directory named `x.wav` is kept, so that preprocessing lists it in
    rejects.csv with its reason instead of it silently missing from the dataset.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder not found")
    classes = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        if files:
            classes[folder.name] = files
    if len(classes) < 2:
        raise ValueError(f"{root}: needs at least two class folders with audio files, found {sorted(classes)}")
    return classes


def speaker_of(path: Path, class_folder: Path) -> str:
    """The first sub-folder of the class folder that holds `path`, or the class name for a file directly in it."""
    parts = Path(path).relative_to(class_folder).parts
    return parts[0] if len(parts) > 1 else Path(class_folder).name


def folder_sources(root: Path) -> list[SourceFile]:
    """One row per audio file of a folder-per-class dataset, without a split yet, named relative to `root` as found
    (a link is not resolved: its name is the one the user chose)."""
    root = Path(root)
    return [SourceFile(path.relative_to(root).as_posix(), label, speaker_of(path, root / label), "")
            for label, files in discover(root).items() for path in files]


def recording_groups(root: Path, rows: list[SourceFile]) -> list[list[int]]:
    """Indices of `rows` grouped by the recording they name, groups and members in row order.

    Two names are one recording when they are the same file (one inode: symbolic or hard links) or have the same
    content (identical copies). Contents are only hashed where sizes collide, so a dataset without copies costs one
    stat per file. Entries that hold no recording (dangling links, directories, FIFOs, empty files) stay alone:
    preprocessing rejects each of them with its reason.
    """
    keys: list[Hashable] = []
    inodes_by_size: dict[int, dict[tuple[int, int], Path]] = {}
    for i, row in enumerate(rows):
        path = source_path(root, row.path)
        try:
            info = path.stat()
        except OSError:
            info = None
        if info is None or not stat.S_ISREG(info.st_mode) or info.st_size == 0:
            keys.append(("alone", i))
            continue
        keys.append((info.st_dev, info.st_ino))
        inodes_by_size.setdefault(info.st_size, {}).setdefault(keys[-1], path)
    content: dict[Hashable, Hashable] = {}
    for size, inodes in inodes_by_size.items():
        if len(inodes) > 1:
            content.update({inode: (size, file_digest(path)) for inode, path in inodes.items()})
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(content.get(key, key), []).append(i)
    return list(groups.values())


def file_digest(path: Path) -> bytes:
    """BLAKE2b of the whole file, read in blocks so that long recordings need no memory."""
    digest = hashlib.blake2b()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.digest()


def summarize(rows: list[SourceFile], groups: list[list[int]], by: str) -> ManifestSummary:
    """Count the groups of several names and those whose names disagree on what the split follows."""
    shared = [g for g in groups if len(g) > 1]
    decides = (lambda r: (r.label, r.speaker)) if by == "speaker" else (lambda r: r.label)
    return ManifestSummary(sum(map(len, shared)), len(shared),
                           sum(len({decides(rows[i]) for i in g}) > 1 for g in shared))


def split_files(files: list[T], split: SplitConfig, label: str) -> dict[T, str]:
    """Assign each file (or group of names of one recording) of one class to a split; every split gets one when
    there are at least three."""
    order = list(files)
    random.Random(f"{split.seed}:{label}").shuffle(order)
    n = len(order)
    n_test = max(1, round(n * split.test)) if split.test > 0 and n >= 3 else 0
    n_val = max(1, round(n * split.val)) if split.val > 0 and n >= 3 else 0
    names = ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val)
    return dict(zip(order, names, strict=True))


def speaker_split_sizes(n: int, split: SplitConfig) -> dict[str, int]:
    """How many of a class's `n` speakers go to each split.

    With at least three speakers, val and test each get `round(n * fraction)` speakers but at least one (when their
    fraction is above zero), and train keeps at least one. With two speakers, one goes to train and one to test (to
    val if `split.test` is 0), so that class has no voice in val. A class with one speaker cannot be split by speaker
    (`split_speakers` raises).
    """
    if n >= 3:
        n_test = max(1, round(n * split.test)) if split.test > 0 else 0
        n_val = max(1, round(n * split.val)) if split.val > 0 else 0
        while n_test + n_val > n - 1:  # train keeps a speaker
            if n_val >= n_test:
                n_val -= 1
            else:
                n_test -= 1
    else:
        n_test = 1 if n == 2 and split.test > 0 else 0
        n_val = 1 if n == 2 and split.test == 0 and split.val > 0 else 0
    return {"test": n_test, "val": n_val, "train": n - n_test - n_val}


def split_speakers(speakers: dict[str, list[str]], split: SplitConfig) -> dict[str, str]:
    """Assign whole speakers to splits, per class and seeded like `split_files`; no speaker lands in two splits.

    `speakers` maps each label to its speakers; sizes per class follow `speaker_split_sizes`. A speaker heard in
    several classes gets its split from the first class (in sorted order) that has it; the later classes fill their
    quota with their other speakers.
    """
    assigned: dict[str, str] = {}
    for label in sorted(speakers):
        names = sorted(set(speakers[label]))
        if len(names) < 2:
            raise ValueError(
                f"split.by speaker: label {label!r} has a single speaker ({names[0]!r}), so none of its voices can "
                "be held out; give it at least two speakers (speaker sub-folders <class>/<speaker>/ in a folder "
                "dataset, the speaker column of a CSV manifest) or use split.by file")
        sizes = speaker_split_sizes(len(names), split)
        free = [s for s in names if s not in assigned]
        random.Random(f"{split.seed}:{label}").shuffle(free)
        have = Counter(assigned[s] for s in names if s in assigned)
        for name in ("test", "val"):
            while have[name] < sizes[name] and len(free) > (0 if have["train"] else 1):
                assigned[free.pop(0)] = name
                have[name] += 1
        for speaker in free:
            assigned[speaker] = "train"
    return assigned


def assign_splits(rows: list[SourceFile], split: SplitConfig,
                  groups: list[list[int]] | None = None) -> list[SourceFile]:
    """Give every row its split (by file or by speaker, as `split.by` says), sorted by path.

    `groups` (from `recording_groups`; by default each row alone) are split as units: every name of a recording
    gets the split of the group's first name, whose label (and speaker) decide it.
    """
    groups = groups if groups is not None else [[i] for i in range(len(rows))]
    firsts = [rows[g[0]] for g in groups]
    if split.by == "speaker":
        missing = [r for r in rows if not r.speaker]
        if missing:
            raise ValueError(f"split.by speaker: {len(missing)} file(s) have no speaker, e.g. {missing[0].path}")
        speakers: dict[str, list[str]] = {}
        for r in firsts:
            speakers.setdefault(r.label, []).append(r.speaker)
        by_speaker = split_speakers(speakers, split)
        names = [by_speaker[r.speaker] for r in firsts]
    else:
        by_group: dict[int, str] = {}
        for label in sorted({r.label for r in firsts}):
            by_group.update(split_files([k for k, r in enumerate(firsts) if r.label == label], split, label))
        names = [by_group[k] for k in range(len(groups))]
    out = [replace(rows[i], split=name) for g, name in zip(groups, names, strict=True) for i in g]
    return sorted(out, key=lambda r: r.path)


def build_manifest(root: Path, split: SplitConfig) -> list[SourceFile]:
    """The manifest of a folder-per-class dataset under `root`."""
    rows = folder_sources(root)
    return assign_splits(rows, split, recording_groups(root, rows))


def manifest_for(config: DataConfig) -> list[SourceFile]:
    """The manifest of the data section of an experiment (the dataset itself must exist already)."""
    return manifest_and_summary(config)[0]


def manifest_and_summary(config: DataConfig) -> tuple[list[SourceFile], ManifestSummary]:
    """`manifest_for` and what it found about names sharing a recording, for the data summary."""
    root = data_root(config)
    complete = False
    if config.source == "asvspoof":
        if not config.protocol:
            raise ValueError("data.source is asvspoof but data.protocol names no protocol file")
        rows = asvspoof_sources(Path(config.protocol), root)
    elif config.source == "csv":
        rows, complete = read_csv_sources(Path(str(config.manifest)), need_speakers=config.split.by == "speaker")
    else:
        rows = folder_sources(root)
    groups = recording_groups(root, rows)
    summary = summarize(rows, groups, config.split.by)
    if not complete:
        return assign_splits(rows, config.split, groups), summary
    check_groups_in_one_split(rows, groups, config.manifest)
    if config.split.by == "speaker":
        check_speakers_disjoint(rows, config.manifest)
    return sorted(rows, key=lambda r: r.path), summary


CSV_COLUMNS = ("path", "label", "speaker", "split")


def read_csv_sources(csv_path: Path, need_speakers: bool = False) -> tuple[list[SourceFile], bool]:
    """Rows of a CSV manifest, and whether its `split` column is filled on every row.

    Columns (any order, others are ignored): `path` (relative paths are relative to the CSV's folder, and rows name
    files relative to it, see `relative_path`), `label`, optionally `speaker` and `split`. An empty or absent
    speaker makes the file its own speaker (its path), unless `need_speakers` (a speaker split), where it is an
    error. `split` values are train, val or test; when every row has one they are used as they are, otherwise the
    configured split is applied to all rows and the column is only checked. Errors name the CSV file, the line and
    the column.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: CSV manifest not found")
    base = csv_path.parent
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [c.strip() for c in reader.fieldnames or []]
        for column in ("path", "label") + (("speaker",) if need_speakers else ()):
            if column not in header:
                raise ValueError(f"{csv_path}: line 1: missing column '{column}' (header: {', '.join(header)}; "
                                 f"expected {', '.join(CSV_COLUMNS)}; speaker and split are optional"
                                 f"{', but split.by speaker needs speaker' if column == 'speaker' else ''})")
        reader.fieldnames = header
        rows, given, seen = [], [], {}
        for record in reader:
            line = reader.line_num

            def cell(column: str, record: dict = record) -> str:
                value = record.get(column)
                return value.strip() if isinstance(value, str) else ""

            def fail(column: str, problem: str, line: int = line) -> ValueError:
                return ValueError(f"{csv_path}: line {line}: column '{column}': {problem}")

            if not cell("path"):
                raise fail("path", "empty")
            path = relative_path(base, cell("path"))
            if not source_path(base, path).is_file():
                raise fail("path", f"file not found: {source_path(base, path)}")
            if path in seen:
                raise fail("path", f"{path} is already listed on line {seen[path]}")
            seen[path] = line
            if not cell("label"):
                raise fail("label", "empty")
            if need_speakers and not cell("speaker"):
                raise fail("speaker", "empty, but split.by speaker needs every file's speaker")
            if cell("split") and cell("split") not in SPLITS:
                raise fail("split", f"{cell('split')!r} is not one of {', '.join(SPLITS)} (or empty)")
            given.append(cell("split"))
            rows.append(SourceFile(path, cell("label"), cell("speaker") or path, cell("split")))
    labels = {r.label for r in rows}
    if len(labels) < 2:
        raise ValueError(f"{csv_path}: needs at least two labels, found {sorted(labels)}")
    complete = all(given)
    return (rows if complete else [replace(r, split="") for r in rows]), complete


def check_groups_in_one_split(rows: list[SourceFile], groups: list[list[int]], source: object) -> None:
    """Raise if a CSV's split column puts two names of one recording in two splits (it would be tested on what
    the model trained on)."""
    split_up = [g for g in groups if len({rows[i].split for i in g}) > 1]
    if split_up:
        a = rows[split_up[0][0]]
        b = next(rows[i] for i in split_up[0] if rows[i].split != a.split)
        raise ValueError(f"{source}: {a.path} ({a.split}) and {b.path} ({b.split}) are one recording (the same file "
                         f"or identical content) in two splits ({len(split_up)} such recording(s)); give all names "
                         "of a recording the same split")


def check_speakers_disjoint(rows: list[SourceFile], source: object) -> None:
    """Raise if a speaker has files in two splits (a speaker split given in a CSV must hold voices out)."""
    splits: dict[str, set[str]] = {}
    for r in rows:
        splits.setdefault(r.speaker, set()).add(r.split)
    shared = sorted(s for s, names in splits.items() if len(names) > 1)
    if shared:
        raise ValueError(f"{source}: split.by speaker, but speaker {shared[0]!r} has files in splits "
                         f"{', '.join(sorted(splits[shared[0]]))} ({len(shared)} such speaker(s))")


def write_manifest(rows: list[SourceFile], path: Path) -> None:
    atomic_write_csv(path, [asdict(r) for r in rows], list(SourceFile.__dataclass_fields__))


def read_manifest(path: Path) -> list[SourceFile]:
    with open(path, newline="") as f:
        return [SourceFile(**row) for row in csv.DictReader(f)]
