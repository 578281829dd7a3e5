#!/usr/bin/env bash
# Create .venv (Python 3.12) and install twotower-train with its test and demo dependencies,
# every package at the version pinned in requirements/lock.txt (refresh: scripts/lock.sh).
# Idempotent: a venv that already has the pinned versions is only checked and refreshed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/python312.sh
LOCK=requirements/lock.txt

if [ ! -x .venv/bin/python ]; then
  if ! PY=$(find_python312); then
    echo "error: no Python 3.12 found. megatron-core 0.19 needs Python >= 3.12." >&2
    echo "       install one (e.g. 'pyenv install 3.12') or point PYTHON312 at it." >&2
    exit 1
  fi
  echo "bootstrap: creating .venv with $PY"
  "$PY" -m venv .venv
fi

PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# The lock is complete (every dependency is listed), so --no-deps installs exactly it: nothing
# newer can slip in. mamba-ssm is the one package built here rather than downloaded (below).
echo "bootstrap: installing $LOCK (first run: ~3 min, ~5.5 GB: torch's CUDA build runs on CPUs)"
grep -v '^mamba-ssm==' "$LOCK" > .venv/lock-without-mamba.txt
"${PIP[@]}" install --no-deps -r .venv/lock-without-mamba.txt
echo "bootstrap: installing twotower-train (editable)"
"${PIP[@]}" install --no-deps --no-build-isolation -e .
# mamba_ssm's Triton SSD kernels, for the CPU parity tests that run them under the Triton
# interpreter (docs/mamba_ops.md). Its kernels are pure Python: build it here without CUDA and
# without the prebuilt-wheel download (MAMBA_FORCE_BUILD), against the venv's own torch
# (--no-build-isolation; its setup.py imports setuptools and torch) and without touching the
# pinned dependencies (--no-deps). GPU hosts install the real wheel from the [gpu] extra instead.
MAMBA_SSM_CPU=$(grep '^mamba-ssm==' "$LOCK")
if ! .venv/bin/python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null && \
   ! .venv/bin/python -c 'import importlib.metadata as m, sys; sys.exit(m.version("mamba-ssm") != sys.argv[1])' "${MAMBA_SSM_CPU#*==}" 2>/dev/null; then
  echo "bootstrap: building $MAMBA_SSM_CPU (Triton kernels only, no CUDA extension)"
  MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE \
    "${PIP[@]}" install --no-build-isolation --no-deps "$MAMBA_SSM_CPU"
fi
# Every requirement satisfied, and every pin of the lock is what the venv holds (an older venv
# may hold extra packages; they are left alone).
pip_check .venv/bin/python
.venv/bin/python scripts/check_lock.py "$LOCK"
.venv/bin/python -c 'import twotower_train, megatron.core; print("bootstrap: ok, megatron-core", megatron.core.__version__)'
