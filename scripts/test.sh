#!/usr/bin/env bash
# The default test suite (CPU, ~minutes). Slow tests: .venv/bin/python -m pytest -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
export TORCHDYNAMO_DISABLE="${TORCHDYNAMO_DISABLE:-1}" WANDB_MODE="${WANDB_MODE:-offline}"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
