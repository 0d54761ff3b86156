"""ASVspoof 2019-style protocol files as a dataset source (`data.source: asvspoof`).

The challenge ships its audio as one folder of `<FILE>.flac` and lists it in protocol files, one utterance per line,
five whitespace-separated columns:

    LA_0079 LA_T_1138215 - - bonafide
    LA_0079 LA_T_1271820 - A01 spoof

SPEAKER FILE ENVIRONMENT SYSTEM KEY: KEY (bonafide or spoof) is the label and SPEAKER the speaker. A spoofed
utterance carries the speaker it imitates, so `split.by: speaker` holds a voice out of training in both classes.
SYSTEM is the attack (A01..A19, `-` for bona fide) and column 3 is `-` in the LA scenario and the acoustic
environment in PA; neither reaches the manifest, whose rows are the same for every source, but `read_protocol` keeps
SYSTEM for whoever wants to score per attack.

Protocols list tens of thousands of files, so the audio folder is read once rather than stat-ed once per line (each
stat is a round trip on a cluster file system); the manifest stats each file once afterwards, to find names of one
recording. Rows name the audio by its file name, relative to the audio folder (the data root). Every error names
the protocol file, the line and the bad value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.sources import SourceFile

KEYS = ("bonafide", "spoof")
PROTOCOL_AUDIO_SUFFIXES = (".flac", ".wav")
"""The suffixes the audio of a protocol's FILE may have, tried in this order: the challenge's flac first, a wav copy
if there is no flac. (Not `pipeline.audio.AUDIO_SUFFIXES`: every suffix that a folder dataset's audio may have.)"""
COLUMNS = "SPEAKER FILE - SYSTEM KEY"


@dataclass(frozen=True)
class ProtocolEntry:
    line: int
    """Line of the protocol file (from 1), for messages that point back at it."""
    speaker: str
    file: str
    """The FILE column: the audio's name without folder or suffix."""
    system: str
    """The SYSTEM column: the spoofing attack, `-` for bona fide speech."""
    key: str
    """`bonafide` or `spoof`: the label."""
    path: str
    """The audio file of FILE relative to the audio folder (its name there), as the manifest names it."""


def read_protocol(protocol: Path, root: Path) -> list[ProtocolEntry]:
    """Every line of `protocol` with its audio file under `root`, in protocol order.

    Blank lines are skipped. A line without exactly five columns, a KEY other than bonafide/spoof, a FILE that is
    not a plain name, a FILE listed twice, or a FILE with neither `<root>/<FILE>.flac` nor `.wav` is a ValueError
    naming the protocol, the line and the value; so is a protocol without lines or with only one of the two keys.
    """
    protocol, root = Path(protocol), Path(root)
    if not protocol.is_file():
        raise FileNotFoundError(f"{protocol}: protocol file not found")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: audio folder of {protocol} not found (data.root)")
    audio = _regular_files(root)
    entries: list[ProtocolEntry] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(protocol.read_bytes().splitlines(), start=1):
        where = f"{protocol}: line {number}"
        try:
            text = raw.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as err:
            raise ValueError(f"{where}: not UTF-8 text ({err.reason} at byte {err.start}): {raw[:80]!r}") from err
        columns = text.split()
        if not columns:
            continue
        if len(columns) != 5:
            raise ValueError(f"{where}: expected 5 whitespace-separated columns ({COLUMNS}), found "
                             f"{len(columns)}: {text.strip()!r}")
        speaker, file, _, system, key = columns
        if key not in KEYS:
            raise ValueError(f"{where}: KEY (column 5) is {key!r}, expected bonafide or spoof")
        if "/" in file or "\\" in file or file in (".", ".."):
            raise ValueError(f"{where}: FILE (column 2) is {file!r}, expected a file name without a folder")
        if file in seen:
            raise ValueError(f"{where}: FILE {file!r} is already listed on line {seen[file]}")
        seen[file] = number
        path = next((audio[file + suffix] for suffix in PROTOCOL_AUDIO_SUFFIXES if file + suffix in audio), None)
        if path is None:
            raise ValueError(f"{where}: FILE {file!r}: no audio file {root / (file + PROTOCOL_AUDIO_SUFFIXES[0])} "
                             f"(nor {PROTOCOL_AUDIO_SUFFIXES[1]})")
        entries.append(ProtocolEntry(number, speaker, file, system, key, path.name))
    if not entries:
        raise ValueError(f"{protocol}: no protocol lines (empty file); expected one '{COLUMNS}' line per utterance")
    keys = sorted({e.key for e in entries})
    if len(keys) < 2:
        raise ValueError(f"{protocol}: needs at least two labels (bonafide and spoof), found only {keys[0]!r} on "
                         f"all {len(entries)} lines")
    return entries


def asvspoof_sources(protocol: Path, root: Path) -> list[SourceFile]:
    """One manifest row per protocol line, without a split yet: label KEY, speaker SPEAKER."""
    return [SourceFile(e.path, e.key, e.speaker, "") for e in read_protocol(protocol, root)]


def _regular_files(root: Path) -> dict[str, Path]:
    """Name to path of every regular file (or link to one) directly in `root`, from one directory read."""
    with os.scandir(root) as entries:
        return {entry.name: Path(entry.path) for entry in entries if entry.is_file()}
