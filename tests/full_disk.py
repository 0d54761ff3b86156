"""A small file system for full-disk tests: a tmpfs the test mounts where the stage writes, and fills or resizes.

```python
from tests.full_disk import small_filesystem

def test_preprocessing_on_a_full_disk(tmp_path):
    with small_filesystem(tmp_path / "run" / "features", 256 * 1024) as disk:
        disk.fill()                      # no block left (or fill(leave=N): N bytes left)
        ...                              # the stage fails naming the path, nothing half-written
        disk.unfill()                    # space freed: the same command must work again
        disk.resize(64 * 1024 * 1024)    # or a bigger file system, contents kept
```
Mounting needs root (or CAP_SYS_ADMIN); without it, or where the mount fails (a container), the test is skipped
with the reason. A tmpfs counts whole pages, so every file takes at least one page (4 KiB).
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

FILLER = ".filler"
CHUNK = 64 * 1024


@dataclass
class SmallFilesystem:
    """A mounted tmpfs at `path`."""

    path: Path

    def free(self) -> int:
        """Bytes a non-root writer may still write."""
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize

    def used(self) -> int:
        stats = os.statvfs(self.path)
        return (stats.f_blocks - stats.f_bfree) * stats.f_frsize

    def resize(self, size: int) -> None:
        """Change the size to `size` bytes (at least what is used), keeping the contents."""
        _mount(["-o", f"remount,size={size}", self.path])

    def fill(self, leave: int = 0) -> None:
        """Write `FILLER` until the file system is full, then give back `leave` bytes (rounded to whole pages)."""
        filler = self.path / FILLER
        with open(filler, "ab", buffering=0) as out:
            try:
                while True:
                    out.write(b"\0" * CHUNK)
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
            for size in (4096, 1):  # the last partial chunk's worth
                try:
                    while True:
                        out.write(b"\0" * size)
                except OSError as err:
                    if err.errno != errno.ENOSPC:
                        raise
            if leave:
                out.truncate(max(0, out.seek(0, os.SEEK_END) - leave))

    def unfill(self) -> None:
        """Free the space `fill` took."""
        (self.path / FILLER).unlink(missing_ok=True)


def _mount(args: list[str | Path]) -> subprocess.CompletedProcess:
    result = subprocess.run(["mount", *map(str, args)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise OSError(f"mount {' '.join(map(str, args))}: {result.stderr.strip()}")
    return result


@contextmanager
def small_filesystem(path: Path, size: int) -> Iterator[SmallFilesystem]:
    """Mount a tmpfs of `size` bytes at `path` (made if missing) for the block, then unmount it; skip the test where
    this process may not mount one."""
    if os.geteuid() != 0:
        pytest.skip("a full-disk test mounts a small tmpfs, which needs root")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    try:
        _mount(["-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", path])
    except OSError as err:
        pytest.skip(f"cannot mount a tmpfs here: {err}")
    try:
        yield SmallFilesystem(path)
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
