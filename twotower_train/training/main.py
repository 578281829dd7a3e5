"""``twotower-train``: compose a Hydra recipe, build the trainer, train, close.

Examples (CPU; the demo data comes from ``python -m data_tools.demo_corpus --out runs/demo_data``)::

    .venv/bin/twotower-train                                   # recipes/demo.yaml (stage-1 AR)
    .venv/bin/twotower-train training.max_steps=20 optimizer.clip_grad=0.5
    .venv/bin/twotower-train --config-name nano_30b_a3b --cfg job   # print a composed recipe
    .venv/bin/python -m twotower_train.training run_name=try1 checkpoint.save_interval=10

A recipe error prints one line naming the key (exit code 2) before anything is built. SIGTERM /
SIGUSR1 checkpoint and exit 0 (see docs/launch.md for SLURM requeueing).
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from twotower_train.model.config import ConfigError
from twotower_train.training.config import RECIPES_DIR, TrainConfig, from_omegaconf


def run(cfg: TrainConfig) -> str:
    """Train one recipe; returns the trainer's outcome (finished / max_steps / preempted)."""
    from twotower_train.training.trainer import Trainer

    trainer = Trainer(cfg)
    try:
        return trainer.train()
    finally:
        trainer.close()


@hydra.main(config_path=str(RECIPES_DIR), config_name="demo", version_base=None)
def _hydra_entry(recipe: DictConfig) -> None:
    try:
        cfg = from_omegaconf(recipe)
    except ConfigError as error:
        print(f"twotower-train: recipe error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    outcome = run(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"twotower-train: {outcome} at {cfg.output_dir}", flush=True)


def main() -> None:
    """Console entry point (``twotower-train``, ``python -m twotower_train.training``)."""
    from twotower_train import distributed

    try:
        _hydra_entry()
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
