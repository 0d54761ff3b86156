#!/usr/bin/env bash
# Write constraints.txt: every dependency of pyproject.toml (all extras, direct and transitive) at one exact version,
# for Python >= 3.11 on any platform (uv's universal resolution), in pip's constraints format.
#   scripts/lock.sh              add what pyproject.toml gained, keep every other pin as it is
#   scripts/lock.sh --upgrade    move every pin to the newest release the ranges in pyproject.toml allow
#   scripts/lock.sh --check      exit 1 if constraints.txt does not match pyproject.toml (writes nothing)
# After a change: ./setup.sh (a new lock reinstalls .venv) and the tests. Needs PyPI; uv runs from a throwaway venv.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9

mode=${1:-}
case "$mode" in ""|--upgrade|--check) ;; *) echo "usage: scripts/lock.sh [--upgrade|--check]" >&2; exit 2 ;; esac

tool=$(mktemp -d)
trap 'rm -rf "$tool"' EXIT
python3 -m venv "$tool/venv"
"$tool/venv/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION"

out=constraints.txt
[ "$mode" = --check ] && { cp constraints.txt "$tool/constraints.txt"; out="$tool/constraints.txt"; }
args=(pyproject.toml --all-extras --universal --python-version 3.11 --quiet
      --custom-compile-command "scripts/lock.sh" -o "$out")
[ "$mode" = --upgrade ] && args+=(--upgrade)
"$tool/venv/bin/uv" pip compile "${args[@]}"

if [ "$mode" = --check ]; then
    if diff -u constraints.txt "$out"; then echo "lock: constraints.txt matches pyproject.toml"
    else echo "lock: constraints.txt is out of date: run scripts/lock.sh" >&2; exit 1; fi
fi
