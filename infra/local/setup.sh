#!/usr/bin/env bash
# Set up a local development environment in .venv: PyTorch, then this package with its test extras.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# torch first, pinned: on the project's build machines these wheels come from local disk (no multi-GB download)
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
