"""Training objectives: the protocol (``base``), stage-1 AR (``ar``), stage-2 diffusion
(``diffusion``), and the registry that picks one by name from the recipe
(``objective.name: ar | diffusion``).

Registry: :data:`OBJECTIVES` maps a recipe name to ``"module:Class"``; the class carries its own
config dataclass as ``Class.Config`` (the recipe's ``objective:`` keys other than ``name``).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any

from twotower_train.errors import ConfigError
from twotower_train.training.objectives.base import (
    Objective,
    ObjectiveBase,
    transformer_flops_per_token,
    vocab_parallel_argmax,
)
from twotower_train.training.validation import reject_unknown

__all__ = [
    "OBJECTIVES",
    "Objective",
    "ObjectiveBase",
    "build_objective",
    "objective_class",
    "transformer_flops_per_token",
    "vocab_parallel_argmax",
]

OBJECTIVES: dict[str, str] = {
    "ar": "twotower_train.training.objectives.ar:ARObjective",
    "diffusion": "twotower_train.training.objectives.diffusion:DiffusionObjective",
}
"""Recipe name -> ``"module:Class"`` (imported on first use, so a stage-1 run never imports the
two-tower model)."""


def objective_class(name: str) -> type:
    """The objective class registered under ``name`` (error names ``objective.name``)."""
    if name not in OBJECTIVES:
        raise ConfigError(
            f"objective.name={name!r} is not registered; choose one of {sorted(OBJECTIVES)}"
        )
    module, cls = OBJECTIVES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_objective(name: str, options: Mapping[str, Any]) -> Objective:
    """Instantiate objective ``name`` with its ``Config`` built from ``options``.

    Unknown option keys raise :class:`ConfigError` naming them.
    """
    cls = objective_class(name)
    config_cls = cls.Config
    reject_unknown(options, {f.name for f in dataclasses.fields(config_cls)}, "objective")
    try:
        config = config_cls(**options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"objective ({name}): {error}") from error
    return cls(config)
