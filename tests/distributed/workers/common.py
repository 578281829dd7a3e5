"""Shared by the 2-rank parity workers (run as scripts, so imported as a sibling module)."""

import os

import torch.distributed as dist
from megatron.core import dist_checkpointing


def save_reference(sharded_state_dict: dict, ckpt_dir: str) -> None:
    """Collective dist_checkpointing save of the TP=1 reference into a fresh folder."""
    if dist.get_rank() == 0:
        os.makedirs(ckpt_dir)
    dist.barrier()
    dist_checkpointing.save(sharded_state_dict, ckpt_dir)


def report(name: str, diff: float, kind: str = "max_abs_diff") -> None:
    if dist.get_rank() == 0:
        print(f"PARITY {name} {kind}={diff:.2e}", flush=True)
