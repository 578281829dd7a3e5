"""2-rank worker: the backbone under TP=2 (with and without SP) and EP=2 gives the TP=1 logits.

Weights come from one TP=1 build, saved with Megatron dist_checkpointing and loaded (resharded)
into each parallel layout — so this also exercises checkpoint resharding of every layer type.
"""

import sys

import torch
from common import report, save_reference
from megatron.core import dist_checkpointing
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

import twotower_train  # noqa: F401
from twotower_train import distributed
from twotower_train.model.backbone import build_backbone, forward_logits, transformer_config
from twotower_train.model.config import ParallelConfig, preset

LAYOUTS = {
    "tp2": ParallelConfig(tensor_parallel=2),
    "tp2-sp": ParallelConfig(tensor_parallel=2, sequence_parallel=True),
    "ep2": ParallelConfig(expert_parallel=2),
    # The nano_ep8 shape in small: dense layers TP=2 + SP, whole experts EP=2 on the same ranks.
    "tp2-sp-ep2-etp1": ParallelConfig(
        tensor_parallel=2, sequence_parallel=True, expert_parallel=2, expert_tensor_parallel=1
    ),
    # Experts split like the dense layers (Megatron's default expert_tensor_parallel = TP).
    "tp2-sp-etp2": ParallelConfig(
        tensor_parallel=2, sequence_parallel=True, expert_tensor_parallel=2
    ),
}


def main(ckpt_dir: str) -> None:
    cfg = preset("tiny")
    tokens = torch.randint(4, cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))

    distributed.initialize(seed=1234)
    reference_model = build_backbone(cfg).eval()
    with torch.no_grad():
        reference = forward_logits(reference_model, tokens)
    save_reference(reference_model.sharded_state_dict(), ckpt_dir)

    for name, layout in LAYOUTS.items():
        distributed.initialize(
            tensor_parallel=layout.tensor_parallel,
            expert_parallel=layout.expert_parallel,
            expert_tensor_parallel=layout.expert_tensor_parallel,
            seed=99,
        )
        model = build_backbone(cfg, transformer_config(cfg, layout)).eval()
        model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), ckpt_dir))
        with torch.no_grad():
            logits = gather_from_tensor_model_parallel_region(forward_logits(model, tokens))
        diff = (logits - reference).abs().max().item()
        # fp32; TP/EP only re-associate sums (row-parallel all-reduce, expert combine): ~1e-6.
        assert diff < 1e-4, f"{name}: max |logits - TP1 logits| = {diff}"
        report(name, diff)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
