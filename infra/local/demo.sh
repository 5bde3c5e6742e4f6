#!/usr/bin/env bash
# Set up, then run the main job on embedded defaults: `splice demo` (generated pairs -> manifest -> embedded Ray
# -> local store), evaluated and reported. It uses real DINO ViT-S/16 weights (and real metric weights) when they
# are cached, in SPLICE_WEIGHTS_DIR, or downloadable; where they cannot be had it falls back to random weights of
# the same architecture, says so in large letters and labels every number in the report.
# Extra arguments go to `splice demo` (e.g. --backbone random:vit_tiny_patch16_224 for a quick smoke run);
# SPLICE_DEMO_BACKBONE does the same.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash infra/local/setup.sh
exec .venv/bin/splice demo ${SPLICE_DEMO_BACKBONE:+--backbone "$SPLICE_DEMO_BACKBONE"} "$@"
