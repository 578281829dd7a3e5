"""The device rule, guarded on a CPU machine: the model, batches, the corruption generator and
every tensor entering a collective live on ``distributed.device()``.

On a CPU machine the default device *is* the process's device, so a forgotten ``device=`` goes
unnoticed; on a GPU host that tensor lands on the CPU and NCCL rejects it. The tests recreate the
GPU situation: inside the training modules a factory call without ``device=`` lands on the meta
device (``torch.Generator()`` without one is refused), and every ``torch.distributed`` collective
— ours and Megatron's — checks its tensors' device before running.
"""

from __future__ import annotations

import collections
import importlib

import pytest
import torch

from tests.training.fixtures import train
from twotower_train import distributed

TRAINING_MODULES = [
    "twotower_train.training.trainer",
    "twotower_train.training.grad_reduce",
    "twotower_train.training.optimizer",
    "twotower_train.training.megatron_optimizer",
    "twotower_train.training.batches",
    "twotower_train.training.objectives.base",
    "twotower_train.training.objectives.ar",
    "twotower_train.training.objectives.diffusion",
    "twotower_train.diffusion.corruption",
    "twotower_train.diffusion.loss",
    "twotower_train.diffusion.metrics",
]
FACTORIES = {
    "arange",
    "as_tensor",
    "empty",
    "eye",
    "full",
    "linspace",
    "ones",
    "rand",
    "randint",
    "randn",
    "randperm",
    "tensor",
    "zeros",
}
COLLECTIVES = [
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
    "broadcast",
    "all_to_all_single",
]


class DefaultDeviceElsewhere:
    """``torch`` as the training modules see it: factories without a device go to ``meta``."""

    def __init__(self, real) -> None:
        self._real = real

    def __getattr__(self, name):
        attr = getattr(self._real, name)
        if name in FACTORIES:

            def factory(*args, **kwargs):
                if kwargs.get("device") is None:
                    kwargs["device"] = "meta"
                return attr(*args, **kwargs)

            return factory
        if name == "Generator":

            def generator(*args, **kwargs):
                if not args and kwargs.get("device") is None:
                    raise AssertionError("torch.Generator() without a device")
                return attr(*args, **kwargs)

            return generator
        return attr


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)


def guard_collectives(monkeypatch) -> collections.Counter:
    """Every collective checks that its tensors are on ``distributed.device()``; returns the
    calls seen per collective."""
    seen: collections.Counter = collections.Counter()
    for name in COLLECTIVES:
        real = getattr(torch.distributed, name)

        def checked(*args, _real=real, _name=name, **kwargs):
            expected = distributed.device()
            for tensor in _tensors([*args, *kwargs.values()]):
                assert tensor.device == expected, (
                    f"torch.distributed.{_name} got a tensor on {tensor.device}, "
                    f"not on the process's device {expected}"
                )
            seen[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(torch.distributed, name, checked)
    return seen


def default_device_elsewhere(monkeypatch) -> None:
    for module in TRAINING_MODULES:
        mod = importlib.import_module(module)
        monkeypatch.setattr(mod, "torch", DefaultDeviceElsewhere(torch))


def test_guards_catch_what_a_gpu_host_would_reject(monkeypatch):
    guard_collectives(monkeypatch)
    default_device_elsewhere(monkeypatch)
    from twotower_train.training import trainer

    distributed.initialize(seed=0)
    stray = trainer.torch.zeros(1)  # no device=: would be a CPU tensor on a GPU host
    with pytest.raises(AssertionError, match="on meta, not on the process's device cpu"):
        torch.distributed.all_reduce(stray)
    with pytest.raises(AssertionError, match="without a device"):
        trainer.torch.Generator()


@pytest.mark.parametrize("objective", ["ar", "diffusion"])
def test_training_follows_the_device_rule(recipe, tmp_path, monkeypatch, objective):
    seen = guard_collectives(monkeypatch)
    default_device_elsewhere(monkeypatch)
    cfg = recipe(
        f"objective={objective}",
        "curriculum.phases.0.steps=2",
        *(["objective.backbone_checkpoint=none"] if objective == "diffusion" else []),
        "curriculum.phases.0.lr.warmup_steps=0",
        "training.eval_interval=1",
        f"checkpoint.dir={tmp_path / 'ck'}",
        "checkpoint.save_interval=1",
    )
    trainer, outcome = train(cfg)
    assert outcome == "finished" and len(trainer.logger.history) == 2
    # Per step: DDP's bucket all-reduce, finalize_model_grads' num_tokens, the step stats, the
    # eval sums, the preemption flag, the grad norm's two sums.
    assert seen["all_reduce"] >= 2 * 7, seen
    here = distributed.device()
    for module in (trainer.module, trainer.model):
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            assert tensor.device == here, name
    assert trainer.generator.device == here
