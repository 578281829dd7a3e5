"""Megatron's optimizer as the trainer builds it on CUDA — bf16 with fp32 main weights, the
distributed optimizer, ``fully_reshardable`` checkpoints — run on the CPU through
:mod:`tests.training.cuda_on_cpu` (the GPU check repeats this on a GPU host)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from tests.training.cuda_on_cpu import megatron_optimizer_on_cpu
from tests.training.fixtures import three_phases, train
from twotower_train.training.checkpoint_layout import find_latest
from twotower_train.training.megatron_optimizer import MegatronAdamW

BF16 = ("optimizer.precision=bf16",)


def _records(trainer):
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in trainer.logger.history]


@pytest.mark.parametrize(
    "precision, sharded, kill_at",
    [
        pytest.param("bf16", True, 3, marks=pytest.mark.slow, id="bf16-distributed-end-of-phase"),
        pytest.param("bf16", True, 6, id="bf16-distributed-after-a-phase-change"),
        pytest.param("fp32", False, 5, marks=pytest.mark.slow, id="fp32-megatron"),
    ],
)
def test_megatron_optimizer_resume_is_bit_identical(
    recipe, tmp_path, monkeypatch, precision, sharded, kill_at
):
    args = (
        *three_phases(4),
        f"optimizer.precision={precision}",
        f"optimizer.use_distributed_optimizer={str(sharded).lower()}",
    )
    ckdir = tmp_path / "ck"
    with megatron_optimizer_on_cpu(monkeypatch):
        full, _ = train(recipe(*args, "checkpoint.dir=null"))
        assert isinstance(full.optimizer, MegatronAdamW)
        assert full.optimizer.distributed is sharded
        if precision == "bf16":
            dtypes = {n.rsplit(".", 1)[-1]: p.dtype for n, p in full.module.named_parameters()}
            # Megatron keeps Mamba's A_log and D in fp32; the optimizer holds fp32 main weights.
            assert {n for n, d in dtypes.items() if d != torch.bfloat16} == {"A_log", "D"}
        train(recipe(*args, f"checkpoint.dir={ckdir}", f"training.max_steps={kill_at}"))
        assert find_latest(ckdir).name == f"iter_{kill_at:07d}"
        resumed, outcome = train(recipe(*args, f"checkpoint.dir={ckdir}"))
    assert outcome == "finished"
    # Exact: restored bf16 weights, fp32 main weights, moments, step and lr schedule.
    assert _records(resumed) == _records(full)[kill_at:]
    losses = [r["loss"] for r in full.logger.history]
    assert losses[-1] < losses[0]


def test_distributed_optimizer_two_tower_resume_is_bit_identical(recipe, tmp_path, monkeypatch):
    args = (
        *three_phases(2),
        *BF16,
        "objective=diffusion",
        "objective.backbone_checkpoint=none",
        "optimizer.use_distributed_optimizer=true",
    )
    ckdir = tmp_path / "ck"
    with megatron_optimizer_on_cpu(monkeypatch):
        full, _ = train(recipe(*args, "checkpoint.dir=null"))
        train(recipe(*args, f"checkpoint.dir={ckdir}", "training.max_steps=3"))
        resumed, _ = train(recipe(*args, f"checkpoint.dir={ckdir}"))
    assert _records(resumed) == _records(full)[3:]
    # The optimizer's fp32 main weights cover the denoiser exactly (the frozen tower has none).
    numel = sum(
        p.numel()
        for part in full.optimizer._parts()
        for g in part.optimizer.param_groups
        for p in g["params"]
    )
    assert numel == sum(p.numel() for p in full.module.denoiser.parameters())


def test_bf16_without_distributed_optimizer_is_refused(recipe, monkeypatch):
    from twotower_train.errors import ConfigError
    from twotower_train.training.trainer import Trainer

    cfg = recipe(*BF16, "optimizer.use_distributed_optimizer=false", "checkpoint.dir=null")
    with (
        megatron_optimizer_on_cpu(monkeypatch),
        pytest.raises(ConfigError, match="set optimizer.use_distributed_optimizer=true"),
    ):
        Trainer(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("sharded", [False, True], ids=["torch-adamw", "distributed"])
def test_overlapped_communication_gives_the_same_steps(recipe, monkeypatch, sharded):
    """overlap_grad_reduce (+ overlap_param_gather with the distributed optimizer): buckets
    reduced during the last micro-batch's backward, parameters gathered in the next forward —
    the same numbers as the synchronous path (2 micro-batches per step)."""
    base = (
        "curriculum.phases.0.steps=3",
        "curriculum.phases.0.lr.warmup_steps=0",
        "checkpoint.dir=null",
        "training.global_batch_size=4",
        "training.micro_batch_size=2",
    )
    if sharded:
        base = (*base, *BF16, "optimizer.use_distributed_optimizer=true")
    overlap = ["optimizer.overlap_grad_reduce=true"]
    if sharded:
        overlap.append("optimizer.overlap_param_gather=true")
    context = megatron_optimizer_on_cpu(monkeypatch) if sharded else contextlib.nullcontext()
    with context:
        plain, _ = train(recipe(*base))
        overlapped, _ = train(recipe(*base, *overlap))
    assert overlapped.reducer.model.ddp_config.overlap_grad_reduce
    assert _records(overlapped) == _records(plain)
