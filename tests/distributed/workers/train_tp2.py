"""2-rank worker: train the tiny model at TP=2 (+SP) and save checkpoints.

Args: DATA_ROOT RUN_DIR [OVERRIDE...] (the curriculum and objective come from the test). Saves
every 4 steps; rank 0 prints one ``LOSS <step> <loss> <lr>`` line per step for the test to
compare against TP=1 runs.
"""

import sys

import torch.distributed as dist

import twotower_train  # noqa: F401
from tests.training.fixtures import TINY_OVERRIDES
from twotower_train import distributed
from twotower_train.training.recipes import load_config
from twotower_train.training.trainer import Trainer

OVERRIDES = [
    *TINY_OVERRIDES,
    "checkpoint.save_interval=4",
    "checkpoint.keep_last=3",
    "parallelism=tp2",
]


def main(data_root: str, run_dir: str, *overrides: str) -> None:
    cfg = load_config(
        "demo",
        [
            f"data.root={data_root}",
            f"output_dir={run_dir}",
            f"checkpoint.dir={run_dir}/ck",
            *OVERRIDES,
            *overrides,
        ],
    )
    trainer = Trainer(cfg)
    trainer.train()
    trainer.close()
    if dist.get_rank() == 0:
        for record in trainer.logger.history:
            print(f"LOSS {record['step']} {record['loss']!r} {record['lr']!r}", flush=True)
    distributed.shutdown()


if __name__ == "__main__":  # dist_checkpointing may spawn processes
    main(*sys.argv[1:])
