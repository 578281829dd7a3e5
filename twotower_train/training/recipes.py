"""The Hydra recipes: where they live, what is in them, and a recipe composed and validated into
a :class:`~twotower_train.training.config.TrainConfig` that a run can be built from.

Importing this module loads no torch / Megatron (``twotower-train --help`` and command-line
checks read it in well under a second); validating a recipe imports the schema
(:mod:`twotower_train.training.config`) and the objective it names.
:func:`load_config` composes a recipe programmatically (tests, notebooks)::

    cfg = load_config("demo", ["training.micro_batch_size=2", "model.hidden_size=128"])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twotower_train.errors import ConfigError

if TYPE_CHECKING:
    from twotower_train.training.config import TrainConfig

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


def check_run(cfg: TrainConfig) -> TrainConfig:
    """The objective's checks of a validated recipe (its options against the model and the
    curriculum), before anything is built; returns ``cfg``."""
    from twotower_train.training.objectives import build_objective

    build_objective(cfg.objective_name, cfg.objective_options).check(cfg.model, cfg.curriculum)
    return cfg


def from_omegaconf(cfg: Any, *, check_data: bool = True) -> TrainConfig:
    """Resolve a composed OmegaConf recipe (interpolations included) and validate it."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from twotower_train.training.config import from_container

    try:
        values = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as error:
        raise ConfigError(f"cannot resolve the recipe: {error}") from None
    return check_run(from_container(values, check_data=check_data))


def compose(recipe: str = "demo", overrides: Sequence[str] = ()) -> Any:
    """Compose ``recipes/<recipe>.yaml`` with Hydra overrides (no Hydra run directory)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    try:
        with initialize_config_dir(config_dir=str(RECIPES_DIR), version_base=None):
            return hydra_compose(config_name=recipe, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException, YAMLError) as error:
        raise ConfigError(f"recipe {recipe!r}: {error}") from None


def load_config(
    recipe: str = "demo", overrides: Sequence[str] = (), *, check_data: bool = True
) -> TrainConfig:
    """Compose and validate a recipe; see the module docstring."""
    return from_omegaconf(compose(recipe, overrides), check_data=check_data)
