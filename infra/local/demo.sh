#!/usr/bin/env bash
# Set up, then run the main job on embedded defaults: `splice demo` (generated pairs -> manifest -> embedded Ray
# -> local store), evaluated and reported. Extra arguments go to `splice demo` (e.g. --backbone dino_vits16 to use
# real DINO weights; the default below is a random-weight backbone so the demo also works offline, and its outputs
# are labelled as such).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash infra/local/setup.sh
exec .venv/bin/splice demo --backbone "${SPLICE_DEMO_BACKBONE:-random:vit_small_patch16_224}" "$@"
