#!/usr/bin/env bash
# One prepared check of a GPU host (about 8 minutes on one H100/H200), ending with one summary
# table: install from wheels, pytest -m gpu, nano_proxy stage 1 + stage 2 in bf16 with Megatron's
# distributed optimizer, save -> SIGKILL -> resume, the three samplers (docs/gpu.md).
#
#   bash scripts/gpu_check.sh [options of scripts/gpu_check.py]
#
# Wheels from scripts/fetch_gpu_wheels.sh in .whl/ (or $GPU_WHEELS) are installed offline first;
# without them the current environment must already have the project's dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${GPU_WHEELS:-.whl}
args=()
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  args+=(--wheels "$WHEELS")
fi
exec "$PY" scripts/gpu_check.py "${args[@]}" "$@"
