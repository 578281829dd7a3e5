"""Worker: one complete stage-2 trainer step at each given layout (tests/distributed/full_step.py).

Args: DATA_ROOT OUT MODEL=BACKBONE... LAYOUT... — ``MODEL=BACKBONE`` names the stage-1
checkpoint of each model kind; layout ``x`` writes ``OUT/x/{ck,grads,record.json}``. All layouts run in
the same processes one after the other (each Trainer re-initialises the parallel groups).
"""

import sys
from pathlib import Path

import twotower_train  # noqa: F401
from tests.distributed.full_step import LAYOUTS, run_step, step_overrides
from twotower_train import distributed
from twotower_train.training.recipes import load_config


def main(data_root: str, out: str, *args: str) -> None:
    backbones = dict(a.split("=", 1) for a in args if "=" in a)
    for name in (a for a in args if "=" not in a):
        model, _, overrides = LAYOUTS[name]
        run_dir = Path(out) / name
        cfg = load_config(
            "demo_twotower",
            step_overrides(
                model,
                Path(data_root),
                Path(backbones[model]),
                run_dir,
                overrides,
            ),
        )
        run_step(cfg, run_dir)
    distributed.shutdown()


if __name__ == "__main__":  # dist_checkpointing may spawn processes
    main(*sys.argv[1:])
