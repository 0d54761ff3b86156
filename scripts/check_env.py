"""Check that this environment is the one constraints.txt describes, and that the torch stack loads and runs.

    .venv/bin/python scripts/check_env.py

Run by .ci/run right after setup.sh has built a fresh .venv from the lock, before any test: a pin that does not
install, a package at another version than the lock says, or a torchaudio that does not load with this torch
(torchaudio 2.11.1 with torch 2.11.0 fails with "undefined symbol") stops CI here with the reason.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

LOCK = Path(__file__).resolve().parent.parent / "constraints.txt"


def locked_versions(lock: Path = LOCK, every_platform: bool = False) -> dict[str, str]:
    """{package: version} of every pin in `lock` whose environment marker holds here (with `every_platform`, of
    every package the lock names, its first pin where markers give it several)."""
    pins = {}
    for number, line in enumerate(lock.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        requirement = Requirement(text)
        specifiers = list(requirement.specifier)
        if len(specifiers) != 1 or specifiers[0].operator != "==":
            raise SystemExit(f"{lock}:{number}: {text!r} is not an exact pin (name==version)")
        if every_platform or requirement.marker is None or requirement.marker.evaluate():
            pins.setdefault(canonicalize_name(requirement.name), specifiers[0].version)
    return pins


def mismatches(pins: dict[str, str]) -> list[str]:
    """Installed distributions whose version differs from their pin. Those without a pin (this project, pip)
    are not checked: the lock constrains what is installed, it does not list the installer."""
    problems = []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        # PEP 440 matching: a local build tag (2.11.0+cu130) satisfies ==2.11.0
        if name in pins and not SpecifierSet(f"=={pins[name]}").contains(dist.version, prereleases=True):
            problems.append(f"{name} {dist.version} is installed, constraints.txt pins {pins[name]}")
    return sorted(problems)


def check_torch_stack() -> str:
    """Import torch, torchaudio and torchvision and run one transform of each of the first two."""
    import torch
    import torchaudio
    import torchvision

    wave = torch.sin(torch.linspace(0, 2000, 16000)).unsqueeze(0)
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_mels=64)(wave)
    if mel.shape[:2] != (1, 64) or not torch.isfinite(mel).all():
        raise SystemExit(f"torchaudio MelSpectrogram gave {tuple(mel.shape)} / non-finite values")
    return f"torch {torch.__version__}, torchaudio {torchaudio.__version__}, torchvision {torchvision.__version__}"


def main() -> int:
    pins = locked_versions()
    problems = mismatches(pins)
    for problem in problems:
        print(f"check_env: {problem}", file=sys.stderr)
    if problems:
        print("check_env: this environment is not the lock's; rebuild it: rm -rf .venv && ./setup.sh", file=sys.stderr)
        return 1
    stack = check_torch_stack()
    print(f"check_env: {len(pins)} pins of constraints.txt apply here, every installed one matches; {stack}; "
          "a MelSpectrogram ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
