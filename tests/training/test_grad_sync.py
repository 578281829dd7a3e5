"""The Megatron-DDP gradient path (what CUDA runs use) matches the CPU all-reduce path.

Megatron's bucket sync asks for ``torch.cuda.current_stream()`` to wait on CUDA-graph events;
a stub stream stands in for it here so the DDP + ``finalize_model_grads`` path runs on CPU.
"""

import pytest
import torch

from twotower_train.training.trainer import Trainer


class _StubStream:
    def wait_event(self, _event):
        pass


def _losses(cfg):
    trainer = Trainer(cfg)
    trainer.train()
    trainer.close()
    return [(r["loss"], r["grad_norm"]) for r in trainer.logger.history]


def test_megatron_ddp_path_matches_allreduce_path(recipe, monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: _StubStream())
    common = ("curriculum.phases.0.steps=4", "curriculum.phases.0.lr.warmup_steps=0",
              "checkpoint.dir=null")
    ddp = _losses(recipe(*common, "training.grad_sync=megatron_ddp"))
    plain = _losses(recipe(*common, "training.grad_sync=allreduce"))
    assert len(ddp) == 4
    for (a_loss, a_norm), (b_loss, b_norm) in zip(ddp, plain, strict=True):
        assert a_loss == pytest.approx(b_loss, rel=1e-5)
        assert a_norm == pytest.approx(b_norm, rel=1e-4)
