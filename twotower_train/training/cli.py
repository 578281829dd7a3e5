"""``twotower-train``: compose a Hydra recipe, build the trainer, train, close.

Examples (CPU; the demo data comes from ``python -m data_tools.demo_corpus --out runs/demo_data``)::

    .venv/bin/twotower-train --help                            # recipes, groups, common keys
    .venv/bin/twotower-train                                   # recipes/demo.yaml (stage-1 AR)
    .venv/bin/twotower-train training.max_steps=20 optimizer.clip_grad=0.5
    .venv/bin/twotower-train --config-name nano_30b_a3b --cfg job   # print a composed recipe
    .venv/bin/python -m twotower_train.training run_name=try1 checkpoint.save_interval=10

Every user error — a misspelled key, a recipe value, a checkpoint that does not match the
recipe, a world size that does not fit the parallel sizes — prints one line
``twotower-train: error: ...`` (rank 0) and exits with code 2; ``--debug`` shows tracebacks.
SIGTERM / SIGUSR1 checkpoint and exit 0 (see docs/launch.md for SLURM requeueing); Ctrl-C
(SIGINT) finishes the step, checkpoints, writes summary.json and exits 130; a second Ctrl-C
aborts at once.

Before Hydra runs, the command line is checked against the recipe files alone (no torch /
Megatron import), so ``--help`` and a misspelled key answer in about a second:

* :func:`help_text` — the recipes, the config groups and the common overrides;
* :func:`check_command_line` — composes the requested recipe with Hydra's compose API (the
  same composition ``@hydra.main`` does next) and turns Hydra's errors into one
  :class:`~twotower_train.errors.ConfigError` line, e.g. ``training.max_step=5`` →
  "did you mean training.max_steps=5?" instead of Hydra's "use +training.max_step=5", which
  would add the typo.

:func:`main` is the command (``twotower-train``, ``python -m twotower_train.training``);
:func:`run` trains one validated recipe (the reproduction pipeline and the tests call it).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import hydra
from omegaconf import DictConfig

from twotower_train import cli
from twotower_train.errors import ConfigError
from twotower_train.model.config import BackboneConfig
from twotower_train.training.recipes import (
    DEFAULT_RECIPE,
    RECIPES_DIR,
    recipe_groups,
    top_level_recipes,
)

TOOL = "twotower-train"

COMMON_OVERRIDES = {
    "run_name=NAME": "name of the run; its folder is runs/NAME (output_dir)",
    "output_dir=DIR": "run folder: recipe, console log, metrics, report, checkpoints",
    "data.root=DIR": "data folder (tokenizer/ + indexed/), default runs/demo_data",
    "training.max_steps=N": "stop after N steps (resumable; the curriculum may go on)",
    "curriculum.phases.0.steps=N": "length of phase 0 (every phase: steps or tokens)",
    "training.global_batch_size=N": "samples per optimizer step (micro_batch_size: per forward)",
    "training.log_interval=N": "progress line every N steps (eval_interval: evaluation)",
    "checkpoint.save_interval=N": "checkpoint every N steps (also at the end, SIGTERM, Ctrl-C)",
    "checkpoint.resume=false": "start fresh; a folder that holds a run gets a new sibling",
    "checkpoint.load_from=DIR": "resume from this checkpoint (root or iter_XXXXXXX folder)",
    "checkpoint.fallback=true": "latest damaged: resume from the newest intact checkpoint",
    "objective.backbone_checkpoint=DIR": "stage 2: the stage-1 checkpoint both towers start from",
    "logging.wandb_mode=MODE": "offline (default) | online | disabled",
    "logging.verbose=true": "also print Megatron's INFO lines",
}

# Hydra's own flags that make it do something else than one training run: left to Hydra.
_HYDRA_ONLY = (
    "config_dir",
    "config_path",
    "multirun",
    "hydra_help",
    "info",
    "shell_completion",
    "experimental_rerun",
)


def help_text() -> str:
    recipes = top_level_recipes()
    width = max(map(len, recipes)) + 2
    lines = [
        f"usage: {TOOL} [--config-name RECIPE] [KEY=VALUE ...] [GROUP=OPTION ...] [--debug]",
        "",
        "Train a two-tower block-diffusion LM (or its AR backbone) with a Hydra recipe from",
        f"{RECIPES_DIR}. Docs: docs/training.md (recipes, resume), docs/launch.md.",
        "",
        f"recipes (--config-name; default {DEFAULT_RECIPE}):",
        *(f"  {name:<{width}}{about}" for name, about in recipes.items()),
        "",
        "groups (GROUP=OPTION, e.g. model=tiny):",
        *(f"  {group + ':':<14}{', '.join(options)}" for group, options in recipe_groups().items()),
        "",
        "common overrides (any recipe key works; +KEY=VALUE adds one the file does not list):",
        *(f"  {key:<36}{about}" for key, about in COMMON_OVERRIDES.items()),
        "",
        "flags:",
        "  --cfg job                           print the composed recipe instead of training",
        "  --debug                             tracebacks and library notices (TWOTOWER_DEBUG=1)",
        "  --hydra-help                        Hydra's own options",
    ]
    return "\n".join(lines)


_VALUE_FLAGS = (
    "--config-name",
    "-cn",
    "--config-path",
    "-cp",
    "--config-dir",
    "-cd",
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--experimental-rerun",
)


def flags_first(argv: Sequence[str]) -> list[str]:
    """``argv`` with Hydra's flags (and their values) before the overrides: argparse stops
    taking ``KEY=VALUE`` overrides after a flag, so ``a=1 --config-name R b=2`` would fail with
    "unrecognized arguments" although the order means nothing to the user."""
    flags, rest, args = [], [], list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _VALUE_FLAGS and i + 1 < len(args):
            flags += args[i : i + 2]
            i += 2
            continue
        (flags if arg.startswith("-") else rest).append(arg)
        i += 1
    return flags + rest


def wants_help(argv: Sequence[str]) -> bool:
    return any(arg in ("--help", "-h") for arg in argv)


def _flatten(node: Any, prefix: str = "") -> list[str]:
    keys = []
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, value in items:
        if key == "hydra" and not prefix:
            continue
        path = f"{prefix}{key}"
        keys.append(path)
        keys.extend(_flatten(value, path + "."))
    return keys


def _compose(recipe: str, overrides: Sequence[str]) -> Any:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(RECIPES_DIR), version_base=None):
        return compose(config_name=recipe, overrides=list(overrides))


def _value_of(key: str, overrides: Sequence[str]) -> str:
    for override in overrides:
        name, _, value = override.lstrip("+~").partition("=")
        if name == key:
            return value
    return "VALUE"


def _unknown_key(key: str, recipe: str, overrides: Sequence[str]) -> str:
    from omegaconf import OmegaConf

    value = _value_of(key, overrides)
    section, _, field = key.partition(".")
    if section == "model" and field in BackboneConfig.__dataclass_fields__:
        return f"{key} is not in the model recipe file; add it with +{key}={value}"
    known = _flatten(OmegaConf.to_container(_compose(recipe, [])))
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}={value}? " if close else ""
    return (
        f"{key} is not a key of recipe {recipe!r}; {hint}({TOOL} --help lists the common "
        f"keys, `{TOOL} --cfg job` prints the whole recipe)"
    )


def _explain(error: Exception, recipe: str, overrides: Sequence[str]) -> str:
    text = str(error)
    if match := re.search(r"Could not override '([^']+)'", text):
        return _unknown_key(match.group(1), recipe, overrides)
    if match := re.search(r"An item is already at '([^']+)'", text):
        key = match.group(1)
        return f"+{key}: {key} is already in the recipe; set it without the + ({key}=...)"
    if match := re.search(r"Could not find '([^/']+)/([^']+)'", text):
        group, option = match.groups()
        options = ", ".join(recipe_groups().get(group, [])) or "none"
        return f"{group}={option}: no such option in recipes/{group}/; choose one of {options}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return f"{first} ({TOOL} --help shows the syntax)"


def check_command_line(argv: Sequence[str]) -> None:
    """Raise one :class:`ConfigError` line if Hydra cannot compose what ``argv`` asks for."""
    from hydra._internal.utils import get_args_parser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    parser = get_args_parser()

    def error(message: str) -> None:
        raise ConfigError(f"{message} ({TOOL} --help shows the syntax)")

    parser.error = error  # Hydra's own argparse parser: report, don't print usage and exit
    args = parser.parse_args(list(argv))
    if any(getattr(args, name, None) for name in _HYDRA_ONLY):
        return
    recipe = args.config_name or DEFAULT_RECIPE
    recipes = top_level_recipes()
    if recipe not in recipes:
        raise ConfigError(
            f"--config-name {recipe}: no such recipe in recipes/; choose one of {sorted(recipes)}"
        )
    try:
        _compose(recipe, args.overrides)
    except (HydraException, OmegaConfBaseException) as hydra_error:
        raise ConfigError(_explain(hydra_error, recipe, args.overrides)) from None


def run(cfg):
    """Train one recipe (a :class:`~twotower_train.training.config.TrainConfig`); returns the
    trainer's :class:`~twotower_train.training.trainer.RunResult` (outcome, run folder,
    checkpoint folder)."""
    from twotower_train.training.trainer import Trainer

    trainer = Trainer(cfg)
    try:
        return trainer.train()
    finally:
        trainer.close()


def _train(recipe: DictConfig) -> None:
    from twotower_train import distributed
    from twotower_train.training.recipes import from_omegaconf

    try:
        result = run(from_omegaconf(recipe))
    finally:
        distributed.shutdown()
    if cli.is_rank_zero():
        print(f"{TOOL}: {result.outcome.replace('_', ' ')} at {result.run_dir}", flush=True)
    if result.outcome == "interrupted":
        raise SystemExit(cli.INTERRUPTED_EXIT)  # Ctrl-C: the shell's convention, 128 + SIGINT


@hydra.main(config_path=str(RECIPES_DIR), config_name=DEFAULT_RECIPE, version_base=None)
def _hydra_entry(recipe: DictConfig) -> None:
    # Inside the task function: Hydra would turn an exception into its own multi-line report.
    cli.run_tool(TOOL, _train, recipe)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (``twotower-train``, ``python -m twotower_train.training``); ``argv``
    defaults to ``sys.argv[1:]``."""
    argv = flags_first(cli.pop_debug_flag(sys.argv[1:] if argv is None else argv))
    cli.quiet_startup()
    if cli.debug_enabled():
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra's report with the whole traceback
    if wants_help(argv):
        print(help_text())
        return
    cli.run_tool(TOOL, check_command_line, argv)
    sys.argv = [sys.argv[0], *argv]
    _hydra_entry()
