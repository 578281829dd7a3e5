"""Kernel choice (twotower_train.backends) on a CPU without the interpreter: the pure-torch ops."""

from __future__ import annotations

import pytest
import torch

from twotower_train import backends, cpu_compat
from twotower_train.ops import conv, ssd

CPU = torch.device("cpu")

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-host behaviour")


@pytest.mark.parametrize("needs_grad", [False, True])
@pytest.mark.parametrize("state_stride", [None, 8])
def test_cpu_gets_the_pure_torch_ops(needs_grad, state_stride):
    assert not cpu_compat.triton_interpreter_active()
    assert (
        backends.mamba_scan(CPU, needs_grad=needs_grad, state_stride=state_stride) is ssd.ssd_scan
    )
    assert backends.mamba_conv(CPU, needs_grad=needs_grad) is conv.causal_conv1d
    assert not backends.use_flex_attention(CPU)


def test_bad_kernel_switch_names_the_choices(monkeypatch):
    monkeypatch.setenv("TWOTOWER_MAMBA_KERNELS", "fast")
    with pytest.raises(ValueError, match="TWOTOWER_MAMBA_KERNELS='fast'; use one of auto, torch"):
        backends.mamba_scan(CPU, needs_grad=False, state_stride=None)


def test_interpreter_switch_refuses_without_the_environment_variable(monkeypatch):
    # This pytest process imported triton without TRITON_INTERPRET=1: the kernels are compiled
    # functions, so switching the CPU path on now must fail with the fix in the message.
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1 in the environment"):
        cpu_compat.enable_triton_interpreter()
    assert not cpu_compat.triton_interpreter_active()
