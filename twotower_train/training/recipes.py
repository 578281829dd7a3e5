"""Where the Hydra recipes live and what is in them — plain files, no torch / Megatron import
(``twotower-train --help`` and command-line checks read this in well under a second)."""

from __future__ import annotations

from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
"""The Hydra config folder, ``twotower_train/recipes/`` — package data, so a wheel install has it
too (the checkout's top-level ``recipes`` is a link to it)."""

DEFAULT_RECIPE = "demo"


def _description(path: Path) -> str:
    """The first comment line of a recipe file (what it is for)."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def top_level_recipes() -> dict[str, str]:
    """``--config-name`` choices: name → first comment line."""
    return {p.stem: _description(p) for p in sorted(RECIPES_DIR.glob("*.yaml"))}


def recipe_groups() -> dict[str, list[str]]:
    """Config groups (``model``, ``parallelism``, ...) → their options (``group=option``)."""
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(RECIPES_DIR.iterdir())
        if d.is_dir() and not d.name.startswith((".", "_", "hydra"))
    }
