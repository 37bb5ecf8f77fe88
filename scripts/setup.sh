#!/usr/bin/env bash
# Create .venv (if needed) and install the project with the given extras, e.g. `bash scripts/setup.sh dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-search}"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch/torchvision first and pinned to versions with CPU wheels reachable here; any torch>=2.1 works.
.venv/bin/python -m pip install --quiet "torch${DINO_TORCH_SPEC:-==2.14.1}" "torchvision${DINO_TORCHVISION_SPEC:-==0.29.1}"
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
