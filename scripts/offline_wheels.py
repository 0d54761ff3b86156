"""Download the lock's wheels for a node that cannot reach a package index.

Compute nodes often have no network, and a GPU node's image often has its own Python with torch already in it. This
writes, into DIR, one binary wheel per named package at exactly the version constraints.txt pins (evaluated for the
target Python), with `--no-deps`: the lock already lists every package, so naming what the node lacks is enough.
On the node:

    python3 -m pip install --no-index --no-deps --target /tmp/site DIR/*.whl && export PYTHONPATH=/tmp/site

usage: scripts/offline_wheels.py DIR [--python 3.12] PACKAGE...
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

LOCK = Path(__file__).resolve().parents[1] / "constraints.txt"
PLATFORMS = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64",
             "manylinux_2_34_x86_64", "manylinux1_x86_64", "manylinux_2_5_x86_64"]


def pinned(lock: Path, python: str) -> dict[str, str]:
    """Package -> version for every line of the lock whose marker holds on that Python (Linux, x86-64)."""
    environment = {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
                   "platform_machine": "x86_64", "platform_system": "Linux", "os_name": "posix",
                   "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    versions = {}
    for number, line in enumerate(lock.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        specifiers = list(requirement.specifier)
        if len(specifiers) != 1 or specifiers[0].operator != "==":
            raise SystemExit(f"{lock}:{number}: not an exact pin: {line!r}")
        versions[canonicalize_name(requirement.name)] = specifiers[0].version
    return versions


def download(out: Path, python: str, requirements: list[str]) -> None:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", python, "--implementation", "cp", "-d", str(out)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command + requirements, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the wheels")
    parser.add_argument("packages", nargs="+", help="what the node lacks, by name (the lock gives the version)")
    parser.add_argument("--python", default="3.12", help="the node's Python, major.minor (default 3.12)")
    args = parser.parse_args()
    versions = pinned(LOCK, args.python)
    unknown = [name for name in args.packages if canonicalize_name(name) not in versions]
    if unknown:
        raise SystemExit(f"not in {LOCK.name} for Python {args.python}: {', '.join(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    download(args.out, args.python, [f"{name}=={versions[canonicalize_name(name)]}" for name in args.packages])
    wheels = sorted(args.out.glob("*.whl"))
    size = sum(wheel.stat().st_size for wheel in wheels)
    print(f"{len(wheels)} wheels, {size / 2**20:.1f} MiB, in {args.out}")


if __name__ == "__main__":
    main()
