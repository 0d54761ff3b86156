"""Atomic file output: a reader (or a rerun after a crash) sees either the old file or the complete new one.

A write that fails because the file system or the quota is full raises `DiskFullError`, which names the file, and
leaves the old file as it was and no temporary file behind: the same command works again once space is freed.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

FULL = {errno.ENOSPC: "no space left on the file system (ENOSPC)", errno.EDQUOT: "the disk quota is exceeded (EDQUOT)"}
"""The errors of a full file system or quota, and what they mean."""


class DiskFullError(OSError):
    """A file was not written because its file system or the user's quota is full."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def disk_full(path: Path, err: BaseException) -> DiskFullError | None:
    """The `DiskFullError` of a failed write of `path`, or None when `err` is not about space.

    Most writers pass the OS's ENOSPC/EDQUOT on as an OSError, though some raise another error while handling it
    (torch.save closing its archive): the whole chain is searched. Others (torch.save to a file name, soundfile)
    raise a RuntimeError without any errno; for those the file system is asked: no block left means it was full."""
    reason = next((FULL[e.errno] for e in _chain(err) if isinstance(e, OSError) and e.errno in FULL), None)
    if reason is None and isinstance(err, OSError | RuntimeError) and _no_space_left(Path(path).parent):
        reason = f"no space left on the file system ({type(err).__name__}: {err})"
    if reason is None:
        return None
    return DiskFullError(errno.EDQUOT if "EDQUOT" in reason else errno.ENOSPC,
                         f"{path}: not written: {reason}. The previous {Path(path).name}, if there was one, is "
                         "unchanged and no temporary file is left; free space (or raise the quota) and run the same "
                         "command again")


def _chain(err: BaseException | None) -> list[BaseException]:
    """`err` and the errors it was raised from or while handling."""
    seen: list[BaseException] = []
    while err is not None and not any(err is e for e in seen):
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def _no_space_left(folder: Path) -> bool:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail == 0


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary path beside `path`, then rename it into place; on a full file system or
    quota raise `DiskFullError` (the temporary file removed, `path` untouched)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes files private to their owner; outputs are for the whole group to read
        os.replace(tmp, path)
    except Exception as err:
        full = disk_full(path, err)  # before the temporary file goes: it may hold the last free block
        if full is None:
            raise
        raise full from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    """Rows of dicts as CSV with a header, in the given column order."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, out.getvalue())


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
