"""2-rank worker: the converter under tensor / expert parallelism.

Args: DATA_ROOT HUB_DIR STAGE1_CKPT OUT_DIR.

1. ``import_hf(HUB_DIR, OUT_DIR/imported_tp2, tp=2)`` — an import written at TP=2.
2. For ``tp2`` (TP=2 + SP) and ``ep2``: two steps of stage-2 training from STAGE1_CKPT, saved to
   ``OUT_DIR/<layout>/ck``; rank 0 saves the trained model's own outputs on fixed inputs
   (context-tower logits and the vectorised denoiser logits, gathered over the vocabulary) as
   ``reference.pt``.
3. The same checkpoint loaded at TP=1 (both ranks, data-parallel), rank 0 saves its state dict
   as ``tp1_state.pt``.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

import twotower_train  # noqa: F401
from twotower_train import distributed
from twotower_train.convert.commands import import_hf
from twotower_train.inference.load import load_trained_model
from twotower_train.training.recipes import load_config
from twotower_train.training.trainer import Trainer

OVERRIDES = [
    "model=tiny",
    "data.seq_length=64",
    "model.vocab_size=512",
    "training.global_batch_size=4",
    "training.micro_batch_size=2",
    "training.log_interval=1",
    "training.eval_interval=0",
    "logging.wandb_mode=disabled",
    "training.max_steps=2",
]
BLOCK = 16


def inputs():
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(4, 512, (2, 64), generator=gen)
    noisy = clean.clone()
    noisy[torch.rand(clean.shape, generator=gen) < 0.5] = 3
    return clean, noisy, torch.rand(2, 64 // BLOCK, generator=gen)


def main(data_root: str, hub: str, stage1: str, out: str) -> None:
    out = Path(out)
    import_hf(hub, out / "imported_tp2", tp=2)
    clean, noisy, t = inputs()
    for layout in ("tp2", "ep2"):
        run = out / layout
        cfg = load_config(
            "demo_twotower",
            [
                f"data.root={data_root}",
                f"output_dir={run}",
                f"checkpoint.dir={run}/ck",
                f"objective.backbone_checkpoint={stage1}",
                f"parallelism={layout}",
                *OVERRIDES,
            ],
        )
        trainer = Trainer(cfg)
        trainer.train()
        trainer.close()
        model = trainer.module.eval()
        with torch.no_grad():
            context = model.context_tower(clean).logits
            denoiser = model(clean, noisy, t, BLOCK)
        reference = {
            "context": gather_from_tensor_model_parallel_region(context),
            "denoiser": gather_from_tensor_model_parallel_region(denoiser),
        }
        if dist.get_rank() == 0:
            torch.save(reference, run / "reference.pt")
        distributed.initialize(seed=0)  # TP=1, EP=1 on both ranks
        tp1, _ = load_trained_model(run / "ck")
        if dist.get_rank() == 0:
            torch.save(tp1.state_dict(), run / "tp1_state.pt")
        dist.barrier()
    distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:5])
