#!/usr/bin/env bash
# Fetch, on a machine with PyPI access, the wheels a GPU host without network needs
# (requirements/gpu-host.txt, at the versions of requirements/lock.txt) plus this project's own
# wheel, into one folder (default .whl/, git-ignored). scripts/gpu_check.sh installs them offline from there (docs/gpu.md).
#
#   bash scripts/fetch_gpu_wheels.sh [DIR]
#
# Binary wheels are fetched for CPython 3.12 on manylinux x86-64 whatever this machine is; the
# pure-Python sdists among them are built into wheels here. Fails if the folder would exceed
# GPU_WHEELS_MAX_MB (default 48 MiB: the device tool carries at most 64 MiB with the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PY=${PYTHON:-.venv/bin/python}
MAX_MB=${GPU_WHEELS_MAX_MB:-48}
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
mkdir -p "$DIR"
rm -f "$DIR"/*.whl
while read -r name; do
  name=${name%%#*}; name=${name// /}
  [ -z "$name" ] && continue
  req=$(grep -i "^${name}==" requirements/lock.txt) || {
    echo "fetch_gpu_wheels: $name is not in requirements/lock.txt (bash scripts/lock.sh)" >&2; exit 1; }
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${PLATFORMS[@]}" -d "$DIR" "$req" 2>/dev/null; then
    echo "fetch_gpu_wheels: no wheel of $req on PyPI; building it from its sdist" >&2
    "$PY" -m pip wheel -q --no-deps -w "$DIR" "$req"
  fi
done < requirements/gpu-host.txt
# ---- GPU-kernel issue: mamba-ssm / causal-conv1d wheels (built for the host's CUDA) go here.
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DIR" .
size_mb=$(du -sm "$DIR" | cut -f1)
ls -1 "$DIR"
echo "fetch_gpu_wheels: $(ls "$DIR"/*.whl | wc -l) wheels, ${size_mb} MiB in $DIR"
if [ "$size_mb" -gt "$MAX_MB" ]; then
  echo "fetch_gpu_wheels: ${size_mb} MiB exceeds ${MAX_MB} MiB; trim requirements/gpu-host.txt" >&2
  exit 1
fi
