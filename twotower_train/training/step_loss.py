"""The loss sums of a global step, reduced over micro-batches and data-parallel ranks, and the
evaluation pass — what :class:`~twotower_train.training.trainer.Trainer` adds up each step.

Every micro-batch draws its randomness (corruption masks, times) from a generator seeded by
:func:`micro_batch_seed`, so a sample gets the same corruption at any data-parallel size.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from twotower_train import distributed
from twotower_train.diffusion import MetricSums
from twotower_train.training.batches import eval_batches
from twotower_train.training.curriculum import ActivePhase
from twotower_train.training.objectives import Objective

__all__ = ["evaluate_loss", "micro_batch_seed", "reduce_step_loss"]


def micro_batch_seed(seed: int, step: int, offset: int) -> int:
    """Seed of the trainer's generator for the micro-batch at sample ``offset`` of the global
    batch of ``step`` (63 bits).

    Keyed by the position in the global batch, not by the data-parallel rank, so a sample gets
    the same corruption at any DP size (parity tests, resuming on another layout); only the
    micro-batch size, which groups the samples of one draw, changes it."""
    digest = hashlib.sha256(f"{seed}/{step}/{offset}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def reduce_step_loss(
    objective: Objective,
    numerator: torch.Tensor,
    denominator: torch.Tensor,
    sums: MetricSums,
) -> tuple[float, dict[str, float]]:
    """Exact step loss and objective metrics over micro-batches and data-parallel ranks."""
    vector = torch.cat(
        [numerator.reshape(1), denominator.reshape(1), sums.to_tensor(numerator.device)]
    )
    dist.all_reduce(vector, group=parallel_state.get_data_parallel_group())
    loss = float(vector[0] / vector[1].clamp(min=1.0))
    return loss, objective.summarize(sums.from_tensor(vector[2:]))


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module,
    objective: Objective,
    valid,
    active: ActivePhase,
    generator: torch.Generator,
    *,
    seed: int,
    iters: int,
    micro_batch_size: int,
    dp_rank: int,
    dp_size: int,
) -> float:
    """Loss on the phase's fixed valid micro-batches (same corruption seed every time)."""
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=distributed.device())
    for offset, batch in eval_batches(
        valid, iters=iters, micro_batch_size=micro_batch_size, dp_rank=dp_rank, dp_size=dp_size
    ):
        # Same corruption at every evaluation of the phase (a negative "step" per phase).
        generator.manual_seed(micro_batch_seed(seed, -1 - active.index, offset))
        out, _ = objective.loss(model, batch, active, generator)
        totals += torch.stack([out.numerator.double(), out.denominator.double()])
    dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
    model.train()
    return float(totals[0] / totals[1].clamp(min=1.0))
