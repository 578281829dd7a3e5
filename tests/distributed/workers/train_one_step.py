"""Worker: one complete stage-2 trainer step at each given layout (tests/distributed/full_step.py).

Args: DATA_ROOT BACKBONES OUT LAYOUT... — the stage-1 checkpoint of model kind ``m`` is
``BACKBONES/m/ck``; layout ``x`` writes ``OUT/x/{ck,grads,record.json}``. All layouts run in
the same processes one after the other (each Trainer re-initialises the parallel groups).
"""

import sys
from pathlib import Path

import twotower_train  # noqa: F401
from tests.distributed.full_step import LAYOUTS, run_step, step_overrides
from twotower_train import distributed
from twotower_train.training.config import load_config


def main(data_root: str, backbones: str, out: str, *layouts: str) -> None:
    for name in layouts:
        model, _, overrides = LAYOUTS[name]
        run_dir = Path(out) / name
        cfg = load_config("demo_twotower", step_overrides(
            model, Path(data_root), Path(backbones) / model / "ck", run_dir, overrides,
        ))
        run_step(cfg, run_dir)
    distributed.shutdown()


if __name__ == "__main__":  # dist_checkpointing may spawn processes
    main(*sys.argv[1:])
