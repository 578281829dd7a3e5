"""2-rank worker: train the tiny AR model at TP=2 (+SP) and save checkpoints.

Args: DATA_ROOT RUN_DIR. Runs 6 steps with a checkpoint every 4; rank 0 prints one
``LOSS <step> <loss>`` line per step for the test to compare against a TP=1 resume.
"""

import sys

import torch.distributed as dist

import twotower_train  # noqa: F401
from twotower_train import distributed
from twotower_train.training.config import load_config
from twotower_train.training.trainer import Trainer

OVERRIDES = [
    "model=tiny", "data.seq_length=64", "model.vocab_size=512", "training.global_batch_size=4",
    "training.micro_batch_size=2", "training.log_interval=1", "logging.wandb_mode=disabled",
    "curriculum.phases.0.steps=6", "curriculum.phases.0.lr.warmup_steps=1",
    "checkpoint.save_interval=4", "checkpoint.keep_last=3", "parallelism=tp2",
]


def main(data_root: str, run_dir: str) -> None:
    cfg = load_config("demo", [
        f"data.root={data_root}", f"output_dir={run_dir}", f"checkpoint.dir={run_dir}/ck",
        *OVERRIDES,
    ])
    trainer = Trainer(cfg)
    trainer.train()
    trainer.close()
    if dist.get_rank() == 0:
        for record in trainer.logger.history:
            print(f"LOSS {record['step']} {record['loss']!r} {record['lr']!r}", flush=True)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
