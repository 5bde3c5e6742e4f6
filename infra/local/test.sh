#!/usr/bin/env bash
# Set up, then run the test suite (CPU only, no network; starts its own Ray and S3 servers on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash infra/local/setup.sh
exec .venv/bin/python -m pytest -q "$@"
