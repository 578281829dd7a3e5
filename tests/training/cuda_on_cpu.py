"""Run Megatron's (distributed) optimizer on the CPU, so CPU CI exercises the GPU optimizer path.

Megatron-Core's optimizers allocate with ``device="cuda"``, call ``.cuda()`` and accept only
``torch.cuda.*Tensor`` parameter types; the algorithm itself is device-agnostic. Inside
:func:`megatron_optimizer_on_cpu` a ``TorchFunctionMode`` sends every CUDA placement to the CPU and
answers ``Tensor.type()`` with the CUDA type name, and ``uses_megatron_optimizer`` says yes — so
the trainer builds :class:`~twotower_train.training.megatron_optimizer.MegatronAdamW` with its DDP
config exactly as on a GPU host. A test-only harness: the product never runs Megatron's optimizer
on the CPU (``cpu_compat`` keeps ``torch.optim.AdamW`` there). With CUDA it only makes sure the
trainer takes Megatron's optimizer, so the same tests run unchanged on a GPU host.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode


def _is_cuda(value) -> bool:
    if isinstance(value, str):
        return value == "cuda" or value.startswith("cuda:")
    return isinstance(value, torch.device) and value.type == "cuda"


class _CudaOnCpu(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)  # e.g. "torch.BFloat16Tensor" -> "torch.cuda.BFloat16Tensor"
            return name if ".cuda." in name else name.replace("torch.", "torch.cuda.", 1)
        if _is_cuda(kwargs.get("device")) or isinstance(kwargs.get("device"), int):
            kwargs["device"] = "cpu"
        args = tuple("cpu" if _is_cuda(a) else a for a in args)
        return func(*args, **kwargs)


@contextlib.contextmanager
def megatron_optimizer_on_cpu(monkeypatch) -> Iterator[None]:
    """The trainer uses Megatron's optimizer (and its DDP config) on this CPU machine."""
    from twotower_train.training import optimizer

    if not torch.cuda.is_available():
        monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(optimizer, "uses_megatron_optimizer", lambda grad_sync: True)
    if torch.cuda.is_available():
        yield
        return
    with _CudaOnCpu():
        yield
