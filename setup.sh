#!/usr/bin/env bash
# Set up everything the pipeline needs, idempotently: Debian packages (when run as root) and the .venv.
#   ./setup.sh            then   .venv/bin/pipeline run configs/demo.yaml
#   ./setup.sh --with-horovod     also build Horovod 0.28.1 into the .venv (scripts/build_horovod.sh; optional)
# Python packages come from constraints.txt (every dependency, exact versions; refresh with scripts/lock.sh), so a
# new release of any of them never changes what a fresh clone gets. Debian packages: debian-packages.txt.
set -euo pipefail
cd "$(dirname "$0")"

WITH_HOROVOD=0
for arg in "$@"; do
    case "$arg" in
        --with-horovod) WITH_HOROVOD=1 ;;
        *) echo "setup: unknown argument '$arg' (usage: ./setup.sh [--with-horovod])" >&2; exit 2 ;;
    esac
done

APT_PACKAGES=$(sed -e 's/#.*//' debian-packages.txt | xargs)
# Horovod's build (only with --with-horovod): CMake, a C++17 compiler, make, patch
[ "$WITH_HOROVOD" = 0 ] || APT_PACKAGES="$APT_PACKAGES cmake g++ make patch"
missing=""
for package in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing="$missing $package"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
        echo "setup: missing Debian packages; as root run: apt-get install -y --no-install-recommends$missing" >&2
    fi
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=".venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
    rm -f .venv/.installed-* && touch "$stamp"
fi
[ "$WITH_HOROVOD" = 0 ] || scripts/build_horovod.sh
echo "setup: ready (.venv/bin/pipeline)"
