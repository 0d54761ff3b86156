"""`gpu_node.py prepare`: what an offline GPU node needs that this machine can make.

The demo's speech (Debian's fillets-ng-data-cs/-nl, which a GPU image lacks) re-encoded as 16 kHz Ogg Vorbis at
libsndfile's highest compression (all 152 minutes in about 37 MB, a seventh of the wav), so that it travels with the
checkout; and, with `--wheels`, the lock's wheels of what the
node's Python lacks (scripts/offline_wheels.py).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import soundfile as sf

from pipeline.io import atomic_write

ROOT = Path(__file__).resolve().parents[1]


def encode_ogg(wav_root: Path, ogg_root: Path) -> int:
    """Every `<speaker>/<name>.wav` under wav_root as `<speaker>/<name>.ogg` under ogg_root; returns the count."""
    count = 0
    for wav in sorted(wav_root.glob("*/*.wav")):
        target = ogg_root / wav.parent.name / f"{wav.stem}.ogg"
        samples, rate = sf.read(wav, dtype="float32")
        atomic_write(target, lambda tmp, samples=samples, rate=rate: sf.write(
            tmp, samples, rate, format="OGG", subtype="VORBIS", compression_level=1.0))
        count += 1
    return count


def prepare(folder: Path, files_per_speaker: int | None, wheels: list[str], python: str) -> None:
    data = folder / "data"
    if data.exists():
        print(f"{data}: exists, kept")
    else:
        with tempfile.TemporaryDirectory() as scratch:
            demo = Path(scratch) / "demo"
            command = [sys.executable, "-m", "pipeline", "data", "demo", str(demo)]
            if files_per_speaker:
                command += ["--max-files-per-speaker", str(files_per_speaker)]
            subprocess.run(command, cwd=ROOT, check=True)
            staging = folder / "data.partial"
            count = encode_ogg(demo, staging)
            staging.replace(data)
        size = sum(path.stat().st_size for path in data.rglob("*.ogg"))
        print(f"{data}: {count} Ogg files, {size / 2**20:.1f} MiB")
    if wheels:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "offline_wheels.py"), str(folder / "wheels"),
                        "--python", python, *wheels], check=True)
