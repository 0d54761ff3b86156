"""No committed file under results/ or configs/ holds an absolute path of a machine.

Users copy run folders and results between machines, so committed files write paths relative to the repository (or
to a data root or run folder). This test reads every text file git tracks under those folders and fails with the
file and its first line that names an absolute path such as /work/..., /home/..., /tmp/... or the repository's own
absolute path.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKED = ("results", "configs")


BINARY_SUFFIXES = frozenset({
    ".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".ico", ".pdf", ".wav", ".flac", ".mp3", ".ogg", ".pt", ".pth",
    ".ckpt", ".npy", ".npz", ".pkl", ".parquet", ".gz", ".zip", ".tar", ".bz2", ".xz",
})

# An absolute path of a machine: a top-level folder where homes, scratch space or checkouts live (not preceded by a
# name character, so `data/tmp/x` or `$TMPDIR/x` do not count), a Windows user folder, or this checkout's own path.
ABSOLUTE_PATH = re.compile(
    r"(?<![\w.$~-])/(?:work|home|root|tmp|scratch|var|Users|mnt|private)/"
    r"|\b[A-Za-z]:[\\/]+Users[\\/]"
    + (f"|{re.escape(REPO.as_posix())}(?![\\w.-])" if REPO.as_posix() != "/" else "")
)


def tracked_files() -> list[str]:
    """Paths (relative to the repository) of the files git tracks under CHECKED; skips the test without git."""
    if shutil.which("git") is None:
        pytest.skip("git is not available")
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--", *CHECKED], capture_output=True,
                            check=False)
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.decode(errors='replace').strip()}")
    return sorted(name for name in listed.stdout.decode().split("\0") if name)


def first_absolute_path(path: Path) -> tuple[int, str] | None:
    """(line number, line) of the first line of a text file that names an absolute path; None if none (or binary)."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if ABSOLUTE_PATH.search(line):
            return number, line
    return None


@pytest.mark.parametrize("text", [
    "/work/main/data/demo", "/home/user/x.wav", '"run_dir": "/tmp/pipeline-bench/cnn"', "run_dir=/scratch/a/b",
    "/root/.cache/x", "/var/tmp/x", "/Users/me/data", r"C:\Users\me\data", f"{REPO.as_posix()}/results",
])
def test_pattern_finds_absolute_paths(text):
    assert ABSOLUTE_PATH.search(text)


@pytest.mark.parametrize("text", [
    "data/demo", "results/demo/manifest.csv", ".venv/bin/pipeline", "run_dir=$TMPDIR/pipeline-bench/cnn/repeat1",
    "runs/demo", "data/tmp/x", "results/work/x", "python benchmarks/train_models_cpu.py", "1/work/2",
])
def test_pattern_leaves_relative_paths(text):
    assert not ABSOLUTE_PATH.search(text)


def test_no_absolute_paths_in_committed_files():
    offenders, checked = [], 0
    for name in tracked_files():
        path = REPO / name
        if path.suffix.lower() in BINARY_SUFFIXES or not path.is_file():
            continue
        checked += 1
        found = first_absolute_path(path)
        if found:
            number, line = found
            shown = line.strip()
            offenders.append(f"{name}:{number}: {shown[:200]}{' ...' if len(shown) > 200 else ''}")
    assert not offenders, (
        f"{len(offenders)} committed file(s) hold an absolute path of a machine (write paths relative to the "
        "repository, the data root or the run folder):\n" + "\n".join(offenders))
    assert checked, f"no committed text files under {', '.join(CHECKED)}"
