"""Resumable, phase-aware batches: Megatron-style sampling by global sample index.

Each curriculum phase has its own blended dataset (:func:`build_phase_data`, one
``build_blended_datasets`` call per phase, shuffled with ``data.seed + phase index`` so two
phases over the same blend do not replay the same order). Within a phase the position is one
number, the phase's *consumed samples*: the step that starts at ``consumed`` trains on global
samples ``[consumed, consumed + global_batch)``. Like Megatron's pretraining sampler, micro-step
``m`` of data-parallel rank ``r`` takes samples ``consumed + m·(micro·DP) + r·micro + [0, micro)``,
so a run sees the same samples in the same order for any DP size, and resuming only needs the
consumed count (stored per phase in the checkpoint). Each micro-batch comes with its offset in
the global batch (the trainer seeds the micro-batch's corruption from it). Tensor-parallel ranks of one data-parallel
rank read the same samples.

Evaluation uses the first ``eval_iters · micro · DP`` samples of the phase's valid split every
time, so evaluations of one phase are comparable across steps. Batches come out on
:func:`twotower_train.distributed.device`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from twotower_train import distributed
from twotower_train.data import build_blended_datasets
from twotower_train.training.config import DataConfig
from twotower_train.training.curriculum import ActivePhase
from twotower_train.training.objectives.base import Batch


@dataclass
class PhaseData:
    """The datasets of one curriculum phase."""

    phase_index: int
    blend: list[tuple[str, float]]
    train: Any
    valid: Any | None


def build_phase_data(
    data: DataConfig,
    active: ActivePhase,
    *,
    global_batch_size: int,
    eval_samples: int,
) -> PhaseData:
    """Build the train (and valid) blended datasets for the phase ``active``.

    Collective: every rank must call it (Megatron's builder builds on rank 0 first).
    """
    train_samples = active.num_steps * global_batch_size
    train, valid = build_blended_datasets(
        list(active.phase.blend),
        data.seq_length,
        {"train": train_samples, "valid": eval_samples},
        data.seed + active.index,
        data.split,
        tokenizer=data.tokenizer,
    )
    return PhaseData(active.index, list(active.phase.blend), train, valid)


def _collate(dataset: Any, indices: list[int]) -> Batch:
    items = [dataset[i] for i in indices]
    keys = ("tokens", "labels", "loss_mask")
    target = distributed.device()
    # Stacked on the CPU (the dataset's numpy arrays), then one copy per tensor to the device.
    return {
        k: torch.stack([torch.as_tensor(item[k], device="cpu") for item in items]).to(target)
        for k in keys
    }


def micro_batches(
    dataset: Any,
    consumed: int,
    *,
    global_batch_size: int,
    micro_batch_size: int,
    dp_rank: int,
    dp_size: int,
) -> Iterator[tuple[int, Batch]]:
    """This rank's micro-batches of the global batch that starts at sample ``consumed``, each
    as ``(offset of its first sample in the global batch, batch)``."""
    per_micro_step = micro_batch_size * dp_size
    if global_batch_size % per_micro_step:
        raise ValueError(
            f"training.global_batch_size={global_batch_size} is not a multiple of "
            f"micro_batch_size × data-parallel size = {per_micro_step}"
        )
    for m in range(global_batch_size // per_micro_step):
        offset = m * per_micro_step + dp_rank * micro_batch_size
        start = consumed + offset
        yield offset, _collate(dataset, list(range(start, start + micro_batch_size)))


def eval_batches(
    dataset: Any, *, iters: int, micro_batch_size: int, dp_rank: int, dp_size: int
) -> Iterator[tuple[int, Batch]]:
    """The fixed evaluation micro-batches of this rank, as ``(first sample index, batch)``."""
    for m in range(iters):
        start = (m * dp_size + dp_rank) * micro_batch_size
        yield start, _collate(dataset, list(range(start, start + micro_batch_size)))
