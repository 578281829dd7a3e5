"""A non-editable install works: the built wheel carries the recipes and the trainer composes
one from another directory, with only that install (plus the venv's dependencies) importable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "twotower_train", "data_tools")


def _run(cmd: list[str], **kw) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_wheel_has_the_recipes_and_composes_one_from_elsewhere(tmp_path):
    # Build from a copy so the checkout gets no build/ or egg-info.
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)]
    )
    (wheel,) = (tmp_path / "dist").glob("twotower_train-*.whl")
    site = tmp_path / "site"
    _run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)])

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "TORCHDYNAMO_DISABLE": "1"}
    # The package resolves to the install, not to the checkout (find_spec runs no package code).
    origin = _run(
        [
            sys.executable,
            "-c",
            "import importlib.util as u; print(u.find_spec('twotower_train').origin)",
        ],
        cwd=elsewhere,
        env=env,
    )
    assert Path(origin.strip()) == site / "twotower_train" / "__init__.py", origin
    assert (site / "twotower_train" / "recipes" / "model" / "tiny.yaml").is_file()
    job = _run(
        [sys.executable, "-m", "twotower_train.training", "--cfg", "job", "--config-name", "demo"],
        cwd=elsewhere,
        env=env,
    )
    assert "run_name: demo_ar" in job and "preset: small" in job, job
