#!/usr/bin/env bash
# The main job on embedded defaults: set up, then extract DINO features of the bundled photo.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/dino ] || bash scripts/setup.sh search
.venv/bin/dino features dino/assets/butterfly.jpg --out outputs/features/butterfly.npy "$@"
