#!/usr/bin/env bash
# Set up everything the pipeline needs, idempotently: Debian packages (when run as root) and the .venv.
#   ./setup.sh            then   .venv/bin/pipeline run configs/demo.yaml
set -euo pipefail
cd "$(dirname "$0")"

# Real speech for the demo and the tests (Fish Fillets voice actors), ffmpeg for formats libsndfile lacks;
# text-to-speech engines and voices for the spoof dataset (pipeline/data/spoof.py, configs/spoof.yaml);
# headless Chromium for tests/report/test_browser.py, which checks that report.html shows its plots in a browser.
APT_PACKAGES="fillets-ng-data-cs fillets-ng-data-nl ffmpeg
    espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
    festvox-czech-dita festvox-czech-machac festvox-czech-krb festvox-czech-ph
    chromium"
missing=""
for package in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing="$missing $package"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
        echo "setup: missing Debian packages; as root run: apt-get install -y$missing" >&2
    fi
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    .venv/bin/pip install -q --disable-pip-version-check -e ".[dev]"
    rm -f .venv/.installed-* && touch "$stamp"
fi
echo "setup: ready (.venv/bin/pipeline)"
