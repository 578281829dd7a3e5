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

Only the help text and the command-line check run before Hydra; they import no torch.
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from twotower_train import cli
from twotower_train.training.command_line import (
    TOOL,
    check_command_line,
    flags_first,
    help_text,
    wants_help,
)
from twotower_train.training.recipes import DEFAULT_RECIPE, RECIPES_DIR


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


def main() -> None:
    """Console entry point (``twotower-train``, ``python -m twotower_train.training``)."""
    argv = flags_first(cli.pop_debug_flag(sys.argv[1:]))
    cli.quiet_startup()
    if cli.debug_enabled():
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra's report with the whole traceback
    if wants_help(argv):
        print(help_text())
        return
    cli.run_tool(TOOL, check_command_line, argv)
    sys.argv = [sys.argv[0], *argv]
    _hydra_entry()


if __name__ == "__main__":
    main()
