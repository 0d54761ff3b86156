"""What made a stage's outputs, so that a run folder never silently reuses results of other settings or code.

Each stage that skips finished work on a rerun (preprocessing skips complete shards, training skips configurations
with metrics and resumes interrupted ones) writes a fingerprint beside its outputs: the settings that shape them, a
digest of its inputs, and the code version. A rerun compares the fingerprint it would write with the one on disk and
refuses on any difference, naming the keys, instead of mixing the two.

The code version is a digest of the package's source files, not the git commit: a commit that only touches the
README or the tests keeps old results valid, and an edit that is not committed yet still counts. The commit is
recorded too, for people, but not compared.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.io import atomic_write_json
from pipeline.layout import FINGERPRINT as FILE_NAME  # noqa: F401 (re-exported)

PACKAGE = Path(__file__).resolve().parent

INFORMATIONAL = {"code.commit"}
"""Recorded for people, never a reason to refuse."""


class StaleOutputs(ValueError):
    """A folder holds outputs made with other settings, inputs or code than the ones asked for now."""


@cache
def code_version() -> dict[str, Any]:
    """The package version, a digest of every source file of the package, and the git commit if there is one."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*")):
        if path.is_file() and path.suffix in {".py", ".sbatch"}:
            digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return {"package": __version__, "source_sha256": digest.hexdigest()[:16], "commit": _git_commit()}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(PACKAGE), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (first 16 hex digits): what identifies an input such as manifest.csv."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def differences(made_with: dict, wanted: dict, prefix: str = "") -> list[str]:
    """`key: old -> new` for every dotted key whose value differs (informational keys left out)."""
    found = []
    for key in sorted(made_with.keys() | wanted.keys()):
        name = f"{prefix}{key}"
        old, new = made_with.get(key), wanted.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found += differences(old, new, f"{name}.")
        elif old != new and name not in INFORMATIONAL:
            found.append(f"{name}: {old!r} -> {new!r}")
    return found


def check_or_record(path: Path, wanted: dict, what: str, start_over: str) -> None:
    """Write `wanted` to `path` if it does not exist; raise StaleOutputs if it differs from what is there.

    `what` names the outputs in the message ("features", "configuration ws2-cpu-bs32"), `start_over` says how to
    get rid of them or go elsewhere.
    """
    path = Path(path)
    if not path.is_file():
        atomic_write_json(path, wanted)
        return
    made_with = json.loads(path.read_text())
    changed = differences(made_with, wanted)
    if changed:
        raise StaleOutputs(f"{path.parent}: the {what} there were made with other settings, inputs or code "
                           f"({'; '.join(changed)}); {start_over}")


def record(path: Path, wanted: dict) -> None:
    """Write a new fingerprint, replacing the old one (for outputs that were just deleted to start over)."""
    atomic_write_json(path, wanted)
