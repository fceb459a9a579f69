#!/usr/bin/env bash
# Creates .venv (once) and installs layermatte into it with the given extras.
# Usage: scripts/setup.sh [extras]   e.g. scripts/setup.sh test  (cpu is always added)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# The ONNX runtime is an extra (cpu or gpu, never both): cpu unless LAYERMATTE_RUNTIME=gpu.
extras="${LAYERMATTE_RUNTIME:-cpu}${1:+,$1}"
spec=".[$extras]"
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
# Editable: the gRPC code is generated from proto/ by setup.py at this step.
.venv/bin/python -m pip install --quiet -e "$spec" 2>&1 | grep -v -i "warning" || true
.venv/bin/python -c "import layermatte.proto.layermatte.v1.matting_pb2" \
  || { echo "setup failed: layermatte is not importable" >&2; exit 1; }
