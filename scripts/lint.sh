#!/usr/bin/env bash
# The static checks CI runs (tests/test_lint.py): import contracts, ruff lint, ruff format check.
#   bash scripts/lint.sh            check only
#   bash scripts/lint.sh --format   format the tree and apply ruff's safe fixes first
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--format" ]; then
  .venv/bin/ruff format .
  .venv/bin/ruff check --fix .
fi
.venv/bin/lint-imports --no-cache
.venv/bin/ruff check .
.venv/bin/ruff format --check .
