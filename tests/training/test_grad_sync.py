"""The Megatron-DDP gradient path (the default) matches the explicit all-reduce reference.

On CPU, Megatron's bucket sync waits on ``torch.cuda.current_stream()``, which
:mod:`twotower_train.cpu_compat` provides.
"""

import pytest

from twotower_train.training.trainer import Trainer


def _losses(cfg):
    trainer = Trainer(cfg)
    trainer.train()
    trainer.close()
    return [(r["loss"], r["grad_norm"]) for r in trainer.logger.history]


def test_megatron_ddp_path_matches_allreduce_path(recipe):
    common = (
        "curriculum.phases.0.steps=4",
        "curriculum.phases.0.lr.warmup_steps=0",
        "checkpoint.dir=null",
    )
    ddp = _losses(recipe(*common, "training.grad_sync=megatron_ddp"))
    plain = _losses(recipe(*common, "training.grad_sync=allreduce"))
    assert len(ddp) == 4
    for (a_loss, a_norm), (b_loss, b_norm) in zip(ddp, plain, strict=True):
        assert a_loss == pytest.approx(b_loss, rel=1e-5)
        assert a_norm == pytest.approx(b_norm, rel=1e-4)
