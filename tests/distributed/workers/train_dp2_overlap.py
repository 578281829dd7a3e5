"""2-rank worker: the tiny AR model data-parallel over 2 ranks, 3 steps of 2 micro-batches per rank,
with and without ``optimizer.overlap_grad_reduce``. Args: DATA_ROOT RUN_DIR. Rank 0 prints
``LOSS <overlap> <step> <loss> <grad_norm>`` lines."""

import sys

import torch.distributed as dist

import twotower_train  # noqa: F401
from twotower_train import distributed
from twotower_train.training.recipes import load_config
from twotower_train.training.trainer import Trainer

OVERRIDES = [
    "model=tiny",
    "data.seq_length=64",
    "model.vocab_size=512",
    "training.global_batch_size=8",
    "training.micro_batch_size=2",
    "training.log_interval=1",
    "logging.wandb_mode=disabled",
    "curriculum.phases.0.steps=3",
    "curriculum.phases.0.lr.warmup_steps=0",
    "checkpoint.dir=null",
]


def main(data_root: str, run_dir: str) -> None:
    for overlap in ("false", "true"):
        cfg = load_config(
            "demo",
            [
                f"data.root={data_root}",
                f"output_dir={run_dir}/{overlap}",
                *OVERRIDES,
                f"optimizer.overlap_grad_reduce={overlap}",
            ],
        )
        trainer = Trainer(cfg)
        trainer.train()
        trainer.close()
        if dist.get_rank() == 0:
            for r in trainer.logger.history:
                print(f"LOSS {overlap} {r['step']} {r['loss']!r} {r['grad_norm']!r}", flush=True)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
