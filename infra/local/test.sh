#!/usr/bin/env bash
# Set up, lint, then run the test suite (CPU only, no network; starts its own Ray and S3 servers on 127.0.0.1).
# The lint step takes seconds and stops at the first problem; SPLICE_SKIP_LINT=1 skips it (e.g. while iterating).
# Arguments go to pytest. With none it runs EVERY test (what CI runs) and lists the 15 slowest; while iterating,
#   bash infra/local/test.sh -m "not slow"
# leaves out the tests marked slow (Ray clusters, driver subprocesses, Ray Train, long trainings): minutes, not a quarter
# of an hour. A single file or test: bash infra/local/test.sh tests/test_run.py -k rerun
set -euo pipefail
cd "$(dirname "$0")/../.."
bash infra/local/setup.sh

lint() {  # lint NAME FIX COMMAND...: run COMMAND; on failure say what failed and how to fix it, and stop
  local name=$1 fix=$2
  shift 2
  if ! "$@"; then
    echo "lint: $name failed (above). $fix" >&2
    exit 1
  fi
}
if [ "${SPLICE_SKIP_LINT:-0}" != 1 ]; then
  lint "ruff check" "Run .venv/bin/ruff check --fix . and fix what it cannot by hand." \
    .venv/bin/ruff check --quiet --output-format concise .
  lint "ruff format --check" "Run .venv/bin/ruff format . to format the files it lists." \
    .venv/bin/ruff format --check --output-format concise .
  lint "lint-imports (the layer contract in pyproject.toml)" \
    "Move the import (or the code) so that no module imports a layer above its own." \
    .venv/bin/lint-imports --no-cache --no-logo
  echo "lint: ruff check, ruff format --check and lint-imports passed"
fi

exec .venv/bin/python -m pytest -q --durations=15 "$@"  # a later --durations in "$@" wins
