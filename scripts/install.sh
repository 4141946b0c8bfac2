#!/usr/bin/env bash
# Set up everything hebbir needs in ./.venv: torch, the project with faiss, and (with --dev) the test tools
# and Debian's chromium for the browser tests. Safe to run again: it only adds what is missing.
#   bash scripts/install.sh          # to run hebbir
#   bash scripts/install.sh --dev    # to run the tests as well
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    *) echo "usage: bash scripts/install.sh [--dev]" >&2; exit 2 ;;
  esac
done

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip

if ! .venv/bin/python -c 'import torch, torchvision' 2>/dev/null; then
  echo "==> installing torch and torchvision"
  pip install -q torch==2.14.1 torchvision==0.29.1
fi

# One faiss only: the GPU build where an NVIDIA driver answers, the CPU build otherwise.
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then extra=gpu; else extra=cpu; fi
# --dev adds the test tools and the Milvus backend (pymilvus + the embedded Milvus Lite), so that its tests run.
[ "$dev" = 1 ] && extras="$extra,dev,milvus" || extras="$extra"
echo "==> installing hebbir[$extras]"
pip install -q -e ".[$extras]"

if [ "$dev" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  echo "==> installing Debian's chromium for the browser tests"
  if [ "$(id -u)" = 0 ]; then apt_get="apt-get"; else apt_get="sudo apt-get"; fi
  if ! { DEBIAN_FRONTEND=noninteractive $apt_get update -qq &&
         DEBIAN_FRONTEND=noninteractive $apt_get install -y -qq chromium >/dev/null; }; then
    echo "    (chromium could not be installed: the browser tests will be skipped)"
  fi
fi
echo "==> ready: .venv/bin/hebbir --help"
