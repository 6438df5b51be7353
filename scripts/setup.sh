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
