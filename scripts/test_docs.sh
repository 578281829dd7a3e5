#!/usr/bin/env bash
# The docs tests: every command of README.md and docs/*.md that runs on a CPU, slow ones included,
# in page order, and the numbers the pages state for them (docs/testing.md). Hours for all pages;
# name pages to run only those: bash scripts/test_docs.sh data training
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # what the docs advise on a shared machine
select="test_page_commands"
if [ $# -gt 0 ]; then
    names=$(printf ' or %s' "$@")
    select="test_page_commands and (${names# or })"
fi
exec bash scripts/test.sh -m slow tests/docs/test_docs_commands.py -k "$select" -rA
