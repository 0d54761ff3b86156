"""Spectrogram images as tar shards in WebDataset's layout: one tar per preprocessing task and image feature.

Why tar, and why this layout. One image file per chunk makes a million files out of 1,000 hours of audio, and
cluster file systems (Lustre, GPFS, NFS) are slow at creating, listing and opening many small files, and often
cap how many a user may own. A tar per task makes the count grow with shards, not chunks (`preprocess.files_per_task`
source files each), and a reader streams it front to back. The layout is WebDataset's: each chunk is a sample whose
members share a key, `<key>.png` (or `<key>.jpg` with `image_format: jpeg`) holding the image bytes exactly as
`images.encode` makes them, and `<key>.json` with {"label", "split", "path", "chunk"}. So nothing but standard
tools is needed to use one: `tar` lists and unpacks it, Python's `tarfile` reads it, and `webdataset.WebDataset`
streams it in a user's own script. The key is the chunk's stem (`task.chunk_name`) with every "." replaced by "_",
because WebDataset splits a member name into key and extension at its first dot.

How to look inside a shard (from the run folder):

```
tar tvf images/logmel/shard-00000.tar | head            # members: <key>.json, <key>.png, ...
tar xf images/logmel/shard-00000.tar -C /tmp/look       # every image as a file (for one file per chunk of the
                                                         # whole run, preprocess with image_layout: files)
tar xOf images/logmel/shard-00000.tar KEY.json           # one member to stdout
python -c "import webdataset as wds; print(next(iter(wds.WebDataset('images/logmel/shard-00000.tar'))).keys())"
```

features/index.csv names each image `images/<feature>/shard-NNNNN.tar#<key>.png`: the tar's path relative to the run
folder, "#", the member's name (`split_reference` takes it apart; the tar path never holds "#", a member may).
`member_table` gives every member's data offset and size, so that a reader fetches one image with a single
`os.pread` instead of walking the archive.

A task writes its tars under temporary names beside their final places and renames each into place (`os.replace`)
before it renames its feature shard folder, the task's completion marker. The bytes depend only on the input: every
member's mtime, mode and owner are fixed, so a rerun of a task writes a byte-identical tar.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import tempfile
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

MTIME = 0
"""mtime of every member (1970-01-01): a fixed value, so that the bytes do not depend on when the task ran."""
MODE = 0o644
"""Permissions of every member: readable by all, writable by whoever unpacks it."""
OWNER = ""
"""User and group name of every member; empty (with uid and gid 0), so no name of this machine lands in a shard."""
PARTIAL = ".shard-*.tar.*.tmp"
"""Temporary names of tars being written (`tempfile.mkstemp(prefix=".shard-NNNNN.tar.", suffix=".tmp")`)."""
_REFERENCE = re.compile(r"(images/[^/#]+/shard-\d{5}\.tar)#(.+)", re.DOTALL)


def shard_file(task_id: int) -> str:
    """File name of a task's tar: shard-NNNNN.tar, the name of its feature shard folder plus `.tar`."""
    return f"shard-{task_id:05d}.tar"


def sample_key(stem: str) -> str:
    """WebDataset key of a chunk: its stem with every "." made "_", so the first dot of a member's name is the one
    before its extension."""
    return stem.replace(".", "_")


def split_reference(reference: str) -> tuple[str, str] | None:
    """(tar path relative to the run folder, member name) of an index entry `images/<f>/shard-NNNNN.tar#<member>`;
    None for the path of an image file (`image_layout: files`), which may hold a "#" of its own."""
    found = _REFERENCE.fullmatch(reference)
    return (found.group(1), found.group(2)) if found else None


class ImageShards:
    """The tars of one task while it runs: one per feature, written under a temporary name until `commit`.

    The members are written here rather than through webdataset's TarWriter, for two things a task needs: each
    image's data offset is known as it is written (the index records it), and `mark` / `rollback` cut a source
    file's images back out when its decoding fails part-way (the file is truncated to the mark). Used as a context
    manager; leaving it without `commit` (an exception, or a task that finds its shard complete) deletes the
    temporary files, so a failed attempt leaves nothing a reader could take for a shard.
    """

    def __init__(self, images_dir: Path, task_id: int, features: list[str]) -> None:
        self.task_id = task_id
        self._final = {feature: Path(images_dir) / feature / shard_file(task_id) for feature in features}
        self._tmp: dict[str, Path] = {}
        self._streams: dict[str, BinaryIO] = {}
        self._marks: dict[str, int] = {}
        try:
            for feature, final in self._final.items():
                final.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
                self._tmp[feature] = Path(tmp)
                self._streams[feature] = os.fdopen(fd, "wb+")
                self._marks[feature] = 0
        except BaseException:
            self.discard()
            raise

    def __enter__(self) -> ImageShards:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.discard()

    def write(self, feature: str, key: str, suffix: str, image: bytes, meta: dict) -> tuple[str, int, int]:
        """Add one chunk's sample (`<key>.<suffix>` and `<key>.json`) to the feature's tar; returns the image
        member's name, the offset of its bytes in the tar and their size."""
        if feature not in self._streams:
            raise KeyError(f"image shard of task {self.task_id}: no tar for feature {feature!r} (opened for "
                           f"{sorted(self._streams)})")
        member = f"{key}.{suffix}"
        parts = {member: image, f"{key}.json": json.dumps(meta, ensure_ascii=False).encode()}
        offsets = {name: _write_member(self._streams[feature], name, parts[name]) for name in sorted(parts)}
        return member, offsets[member], len(image)  # in sorted order, as WebDataset's TarWriter writes a sample

    def mark(self) -> None:
        self._marks = {feature: stream.tell() for feature, stream in self._streams.items()}

    def rollback(self) -> None:
        for feature, stream in self._streams.items():
            stream.truncate(self._marks[feature])
            stream.seek(self._marks[feature])

    def commit(self) -> list[Path]:
        """Finish every tar and rename it into place, replacing what an earlier, incomplete attempt left."""
        for stream in self._streams.values():
            _write_end(stream)
        self._close()
        for feature, tmp in list(self._tmp.items()):
            os.chmod(tmp, 0o644)  # mkstemp makes files private to their owner; shards are for the group to read
            os.replace(tmp, self._final[feature])
            del self._tmp[feature]
        return list(self._final.values())

    def discard(self) -> None:
        """Close and delete the temporary files that were not committed."""
        self._close()
        for tmp in self._tmp.values():
            tmp.unlink(missing_ok=True)
        self._tmp.clear()

    def _close(self) -> None:
        for feature in list(self._streams):
            self._streams.pop(feature).close()


def _write_member(stream: BinaryIO, name: str, data: bytes) -> int:
    """Append one regular file (a POSIX.1-2001 header, as Python's tarfile writes it; names of any length and
    script) and return where its data starts."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), MTIME, MODE
    info.uname = info.gname = OWNER
    stream.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
    offset = stream.tell()
    stream.write(data + tarfile.NUL * (-len(data) % tarfile.BLOCKSIZE))
    return offset


def _write_end(stream: BinaryIO) -> None:
    """The end-of-archive marker, two zero blocks, padded to tarfile's record size as `tarfile.close` pads it."""
    stream.write(tarfile.NUL * 2 * tarfile.BLOCKSIZE)
    stream.write(tarfile.NUL * (-stream.tell() % tarfile.RECORDSIZE))


def remove_partial(images_dir: Path) -> int:
    """Delete the temporary tars of tasks whose writer died (a killed worker or job): no rename will ever complete
    them. Call it only while no task of this run folder runs. Returns how many there were."""
    partial = sorted(Path(images_dir).glob(f"*/{PARTIAL}"))
    for path in partial:
        path.unlink(missing_ok=True)
    return len(partial)


def member_table(tar_path: Path) -> dict[str, tuple[int, int]]:
    """Member name -> (offset of its data in the file, size in bytes), for every regular file of a tar: what a
    reader needs to fetch one member with `os.pread`. Reads the headers only (one pass, seeking past the data)."""
    try:
        with tarfile.open(tar_path, "r:") as tar:
            return {member.name: (member.offset_data, member.size) for member in tar if member.isfile()}
    except tarfile.TarError as err:
        raise ValueError(f"{tar_path}: not a readable tar file ({err})") from None


def read_member(tar_path: Path, member: str) -> bytes:
    """The bytes of one member of a tar (for tests and for looking at one image from Python)."""
    table = member_table(tar_path)
    if member not in table:
        raise KeyError(f"{tar_path}: no member {member!r} ({len(table)} members)")
    offset, size = table[member]
    fd = os.open(tar_path, os.O_RDONLY)
    try:
        data = os.pread(fd, size, offset)
    finally:
        os.close(fd)
    if len(data) != size:
        raise ValueError(f"{tar_path}: member {member!r} is cut short ({len(data)} of {size} bytes; a truncated tar?)")
    return data
