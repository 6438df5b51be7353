#!/usr/bin/env bash
# Create .venv (if missing) and install exactly the tested versions, then this package (editable).
# pip, not uv/poetry: on these machines pip takes torch 2.14.1 / torchvision 0.29.1 from local disk.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/lock.txt
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .

# The real-browser UI test (tests/orchestrator/test_ui_browser.py) drives a headless Chromium.
# Installed from Debian's packages where this runs as root with apt; elsewhere the test says it
# cannot run. Nothing else needs a browser. SKIP_BROWSER=1 leaves the system untouched.
if [ -z "${SKIP_BROWSER:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium for the browser test (SKIP_BROWSER=1 skips this)"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium \
        >/tmp/ot-reweight-chromium.log 2>&1 ||
      { apt-get update >>/tmp/ot-reweight-chromium.log 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium \
          >>/tmp/ot-reweight-chromium.log 2>&1; }; }; then
      echo "setup: chromium could not be installed (see /tmp/ot-reweight-chromium.log);" \
        "the browser test will say so"
    fi
  else
    echo "setup: no chromium; the real-browser UI test needs it (apt-get install chromium)"
  fi
fi
