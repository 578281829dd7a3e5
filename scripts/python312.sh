# Sourced by bootstrap.sh and lock.sh. find_python312 prints a Python 3.12 interpreter's path
# (megatron-core 0.19 needs Python >= 3.12; on 3.11 pip silently resolves megatron-core 0.16).
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

# pip check, except mamba-ssm's own requirements: its CPU build (Triton kernels only, installed
# with --no-deps) does not need the CUDA-side packages it declares.
pip_check() {
  local problems
  problems=$("$1" -m pip check 2>&1 | grep -v '^mamba-ssm ' | grep -v '^No broken requirements' || true)
  if [ -n "$problems" ]; then echo "$problems" >&2; return 1; fi
}
