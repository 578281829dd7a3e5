"""The repository's static checks, run with the test suite (CI runs ``scripts/test.sh``):

* the import layers and no-cycle contracts of ``pyproject.toml`` ``[tool.importlinter]``
  (drawn in docs/architecture.md), checked by ``lint-imports``;
* ``ruff check`` with the rule set of ``pyproject.toml`` ``[tool.ruff]``, and ``ruff format
  --check`` (``bash scripts/lint.sh --format`` formats the tree).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    if not path.is_file():
        pytest.fail(f"{name} is not installed in {BIN}; run scripts/bootstrap.sh (dev extra)")
    return str(path)


def _run(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    proc = _run(_tool("lint-imports"), "--no-cache")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 kept, 0 broken" in proc.stdout


def test_import_contracts_catch_an_upward_import(tmp_path):
    """The same contracts on a copy of the package where ``ops`` imports ``training``."""
    shutil.copytree(REPO / "twotower_train", tmp_path / "twotower_train")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    ops_init = tmp_path / "twotower_train" / "ops" / "__init__.py"
    ops_init.write_text(ops_init.read_text() + "\nimport twotower_train.training.config\n")
    proc = _run(_tool("lint-imports"), "--no-cache", cwd=tmp_path)
    assert proc.returncode != 0
    assert "twotower_train.ops is not allowed to import twotower_train.training" in proc.stdout


def test_ruff_check():
    proc = _run(_tool("ruff"), "check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format():
    proc = _run(_tool("ruff"), "format", "--check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr
