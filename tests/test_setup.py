"""What setup.sh installs is declared once and agrees with what the code asks for."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipeline.data import demo, spoof

ROOT = Path(__file__).resolve().parent.parent


def debian_packages() -> set[str]:
    lines = (ROOT / "debian-packages.txt").read_text().splitlines()
    return {line.split("#", 1)[0].strip() for line in lines} - {""}


def locked() -> dict[str, str]:
    """{package: ==version} of every pin of constraints.txt, read by the parser CI checks the .venv with (it
    refuses a line that is not an exact pin)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from check_env import locked_versions
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return {name: f"=={version}" for name, version in locked_versions(every_platform=True).items()}


def test_setup_installs_every_debian_package_the_datasets_check_for():
    # fillets-ng-data (the dialogue text the spoof voices read) is only recommended by -cs/-nl, which
    # --no-install-recommends skips: it must be named itself.
    wanted = set(spoof.PACKAGES) | set(demo.PACKAGES.values())
    assert "fillets-ng-data" in wanted
    assert wanted <= debian_packages(), sorted(wanted - debian_packages())


def test_lock_pins_every_dependency_exactly_and_the_torch_stack_as_the_project_does():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    requirements += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    pins = locked()
    assert all(spec.startswith("==") for spec in pins.values())
    missing = sorted({canonicalize_name(r.name) for r in requirements} - set(pins))
    assert not missing, f"constraints.txt lacks {missing}: run scripts/lock.sh"
    for name, version in {"torch": "2.11.0", "torchaudio": "2.11.0", "torchvision": "0.26.0"}.items():
        assert pins[name] == f"=={version}"
        assert any(r.name == name and str(r.specifier) == f"=={version}" for r in requirements)
