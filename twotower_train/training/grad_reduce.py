"""Gradient reduction after the micro-batches of a step.

The trainer calls ``reducer.finish(num_tokens)``, which must: sum gradients over data-parallel
replicas (expert parameters over the expert-data-parallel group), sum the gradients of
sequence-parallel parameters (norm weights) over the tensor-parallel group, divide every
gradient by the global loss denominator (the objective's loss is a sum — Megatron's
per-token-loss mode), and apply the MoE router's expert-bias update for the global batch.

* :class:`MegatronDDPReducer` — Megatron's ``DistributedDataParallel`` (contiguous grad buffers,
  bucketed all-reduce, or reduce-scatter into the distributed optimizer's shards) and
  ``finalize_model_grads``, which do all of the above. The default
  (``training.grad_sync=auto``), on CUDA and on CPU (where :mod:`twotower_train.cpu_compat`
  stands in for the CUDA stream its bucket sync waits on). Its DDP config comes from
  :func:`twotower_train.training.optimizer.megatron_configs` (one recipe key with the optimizer).
* :class:`AllReduceReducer` — the same steps written out with ``torch.distributed`` collectives
  (``training.grad_sync=allreduce``): a small, readable reference that the tests compare the
  Megatron path against.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.transformer.moe.moe_utils import get_updated_expert_bias

from twotower_train.training.config import GradSync

__all__ = [
    "AllReduceReducer",
    "GradReducer",
    "MegatronDDPReducer",
    "build_grad_reducer",
    "is_expert_param",
    "update_expert_bias",
]


def is_expert_param(param: torch.nn.Parameter) -> bool:
    """Megatron marks expert parameters (reduced over expert-DP, not DP) with allreduce=False."""
    return not getattr(param, "allreduce", True)


class GradReducer(Protocol):
    model: torch.nn.Module  # what the forward runs on (possibly a DDP wrapper)

    def zero(self) -> None: ...

    def no_sync(self) -> contextlib.AbstractContextManager: ...

    def finish(self, num_tokens: torch.Tensor) -> None: ...

    def sync_params(self) -> None: ...


class MegatronDDPReducer:
    """Megatron-Core DDP + ``finalize_model_grads`` (grads land in ``param.main_grad``)."""

    def __init__(self, model: torch.nn.Module, ddp_config: Any, *, copy_to_grad: bool) -> None:
        from megatron.core.distributed import DistributedDataParallel

        config = model.config
        config.calculate_per_token_loss = True  # sum in the collective, scale by 1/num_tokens
        self.model = DistributedDataParallel(config, ddp_config, model)
        self._copy_to_grad = copy_to_grad  # a torch optimizer reads .grad, Megatron's main_grad

    def no_sync(self) -> contextlib.AbstractContextManager:
        """Accumulate a micro-batch's gradients without launching their reduction
        (``overlap_grad_reduce`` launches buckets during the last micro-batch's backward)."""
        return self.model.no_sync()

    def sync_params(self) -> None:
        """Finish the overlapped parameter all-gather (``overlap_param_gather``) so the model
        holds the updated weights everywhere (before a checkpoint), as Megatron-LM does."""
        if self.model.use_forward_hook:
            self.model.disable_forward_pre_hook(param_sync=True)
            self.model.enable_forward_pre_hook()

    def zero(self) -> None:
        self.model.zero_grad_buffer()
        if self._copy_to_grad:
            for p in self.model.parameters():
                p.grad = None

    def finish(self, num_tokens: torch.Tensor) -> None:
        from megatron.core.distributed import finalize_model_grads

        finalize_model_grads([self.model], num_tokens=num_tokens.clone())
        if self._copy_to_grad:
            for p in self.model.parameters():
                if p.requires_grad:
                    p.grad = p.main_grad.to(p.dtype)


class AllReduceReducer:
    """The steps of ``finalize_model_grads`` with plain collectives over ``param.grad``."""

    def __init__(self, model: torch.nn.Module, trainable: Sequence[torch.nn.Parameter]) -> None:
        self.model = model
        self.trainable = list(trainable)
        self.sequence_parallel = bool(getattr(model.config, "sequence_parallel", False))

    def zero(self) -> None:
        for p in self.trainable:
            p.grad = None

    def no_sync(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # reduces once, in finish()

    def sync_params(self) -> None:
        return None

    @torch.no_grad()
    def finish(self, num_tokens: torch.Tensor) -> None:
        for p in self.trainable:  # unused experts get zero grads: same collective on every rank
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        dense = [p.grad for p in self.trainable if not is_expert_param(p)]
        experts = [p.grad for p in self.trainable if is_expert_param(p)]
        _all_reduce_flat(dense, parallel_state.get_data_parallel_group())
        _all_reduce_flat(experts, parallel_state.get_expert_data_parallel_group())
        if self.sequence_parallel:
            sp = [p.grad for p in self.trainable if getattr(p, "sequence_parallel", False)]
            _all_reduce_flat(sp, parallel_state.get_tensor_model_parallel_group())
        total = num_tokens.detach().clone().double()
        dist.all_reduce(total, group=parallel_state.get_data_parallel_group())
        scale = 1.0 / max(float(total), 1.0)
        for p in self.trainable:
            p.grad.mul_(scale)
        update_expert_bias(self.model)


def _all_reduce_flat(grads: list[torch.Tensor], group) -> None:
    """Sum a list of tensors over ``group`` with one collective per dtype."""
    if not grads or dist.get_world_size(group) == 1:
        return
    for dtype in sorted({g.dtype for g in grads}, key=str):
        same = [g for g in grads if g.dtype == dtype]
        flat = torch.cat([g.reshape(-1) for g in same])
        dist.all_reduce(flat, group=group)
        offset = 0
        for g in same:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


@torch.no_grad()
def update_expert_bias(model: torch.nn.Module) -> None:
    """The MoE router's expert-bias correction for the global batch (as finalize_model_grads).

    Routers in eval mode (a frozen tower) are skipped, like Megatron does."""
    routers = [m for m in model.modules() if hasattr(m, "expert_bias") and m.training]
    routers = [m for m in routers if m.expert_bias is not None]
    if not routers:
        return
    tokens = torch.stack([m.local_tokens_per_expert for m in routers])
    biases = torch.stack([m.expert_bias for m in routers])
    group = parallel_state.get_tensor_and_data_parallel_group(with_context_parallel=True)
    updated = get_updated_expert_bias(
        tokens, biases, routers[0].config.moe_router_bias_update_rate, tp_dp_cp_group=group
    )
    for m, bias in zip(routers, updated, strict=True):
        m.expert_bias.copy_(bias)
        m.local_tokens_per_expert.zero_()


def build_grad_reducer(
    choice: GradSync,
    model: torch.nn.Module,
    trainable: Sequence[torch.nn.Parameter],
    *,
    ddp_config: Any,
    megatron_optimizer: bool,
) -> GradReducer:
    """Megatron DDP for ``auto`` and ``megatron_ddp`` (CUDA and CPU), the explicit all-reduce
    reference for ``allreduce`` (module docstring). ``megatron_optimizer``: Megatron's optimizer
    reads ``main_grad``; otherwise the reducer copies it to ``.grad`` for torch's AdamW."""
    if choice is GradSync.ALLREDUCE:
        return AllReduceReducer(model, trainable)
    return MegatronDDPReducer(model, ddp_config, copy_to_grad=not megatron_optimizer)
