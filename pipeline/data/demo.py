"""The demo dataset: four voice actors of the game Fish Fillets, one folder per speaker.

Debian ships the game's Czech and Dutch voice tracks (`fillets-ng-data-cs`, `fillets-ng-data-nl`) as 22.05 kHz ogg,
one line of dialogue per file. The small fish speaks in files named `*-m-*`, the big fish in `*-v-*`; every other file
is a minor character and is left out. Each language has its own pair of actors, so there are four speakers.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.audio import AudioError, load_audio, save_wav
from pipeline.io import atomic_write_csv

PACKAGES = {"cs": "fillets-ng-data-cs", "nl": "fillets-ng-data-nl"}
ROLES = {"-m-": "m", "-v-": "v"}
INSTALL_HINT = "apt-get install -y " + " ".join(PACKAGES.values())


class MissingPackagesError(RuntimeError):
    """The Debian packages holding the recordings are not installed."""


@dataclass(frozen=True)
class DemoFile:
    source: Path
    speaker: str
    """`<language>-<role>`, e.g. `cs-m` for the Czech small fish."""

    @property
    def relative_output(self) -> Path:
        level = self.source.parent.parent.name
        return Path(self.speaker) / f"{level}__{self.source.stem}.wav"


def package_files(package: str) -> list[Path]:
    """The files a Debian package installed, or [] if it is not installed."""
    result = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return []
    return [Path(line) for line in result.stdout.splitlines() if line.endswith(".ogg")]


def find_recordings(listing: dict[str, Iterable[Path]] | None = None) -> list[DemoFile]:
    """All main-character recordings, sorted; raises with the install command if a package is missing."""
    listing = listing if listing is not None else {lang: package_files(pkg) for lang, pkg in PACKAGES.items()}
    missing = [PACKAGES[lang] for lang, files in listing.items() if not files]
    if missing:
        raise MissingPackagesError(
            f"the demo needs the Debian package(s) {', '.join(missing)}; install them with: {INSTALL_HINT}"
        )
    found = []
    for lang, files in listing.items():
        for path in files:
            if path.parent.name != lang:
                continue
            role = next((r for marker, r in ROLES.items() if marker in path.name), None)
            if role is not None:
                found.append(DemoFile(path, f"{lang}-{role}"))
    return sorted(found, key=lambda f: str(f.source))


def _convert(job: tuple[Path, Path, int]) -> str | None:
    """Write one resampled mono wav; returns why the source was skipped, or None."""
    source, target, sample_rate = job
    if not target.exists():
        try:
            save_wav(target, load_audio(source, sample_rate), sample_rate)
        except AudioError as err:
            return str(err)
    return None


def build_demo(out_dir: Path, sample_rate: int = 16000, max_files_per_speaker: int | None = None,
               workers: int = 2) -> Path:
    """Write the folder-per-speaker dataset into `out_dir` (resumable: existing files are kept)."""
    out_dir = Path(out_dir)
    files = find_recordings()
    if max_files_per_speaker is not None:
        per_speaker: dict[str, list[DemoFile]] = {}
        for f in files:
            per_speaker.setdefault(f.speaker, []).append(f)
        files = [f for group in per_speaker.values() for f in group[:max_files_per_speaker]]
    jobs = [(f.source, out_dir / f.relative_output, sample_rate) for f in files]
    with ProcessPoolExecutor(max_workers=workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        problems = list(pool.map(_convert, jobs, chunksize=16))
    rows = [{"file": f.relative_output.as_posix() if p is None else "", "speaker": f.speaker, "source": str(f.source),
             "skipped": p or ""} for f, p in zip(files, problems, strict=True)]
    atomic_write_csv(out_dir / "SOURCES.csv", rows, ["file", "speaker", "source", "skipped"])
    return out_dir
