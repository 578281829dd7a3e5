"""Gradient reduction and the optimizer — the two places where CPU and CUDA runs differ.

Gradient reduction (:func:`build_grad_reducer`). After the micro-batches of a step the trainer
calls ``reducer.finish(num_tokens)``, which must: sum gradients over data-parallel replicas
(expert parameters over the expert-data-parallel group), sum the gradients of sequence-parallel
parameters (norm weights) over the tensor-parallel group, divide every gradient by the global
loss denominator (the objective's loss is a sum — Megatron's per-token-loss mode), and apply the
MoE router's expert-bias update for the global batch.

* :class:`MegatronDDPReducer` — Megatron's ``DistributedDataParallel`` (contiguous grad buffers,
  bucketed all-reduce) and ``finalize_model_grads``, which do all of the above. The default
  (``training.grad_sync=auto``), on CUDA and on CPU (where :mod:`twotower_train.cpu_compat`
  stands in for the CUDA stream its bucket sync waits on).
* :class:`AllReduceReducer` — the same steps written out with ``torch.distributed`` collectives
  (``training.grad_sync=allreduce``): a small, readable reference that the tests compare the
  Megatron path against.

Optimizer (:func:`build_optimizer`): on CUDA Megatron's optimizer (AdamW, BF16 with fp32 master
weights, distributed optimizer, grad clipping built in); on CPU ``torch.optim.AdamW`` in
:class:`TorchAdamW`, because Megatron's optimizer allocates with ``device='cuda'`` and checks
``torch.cuda.FloatTensor`` types. :class:`TorchAdamW` clips by the same global norm Megatron
computes (each shard once: tensor-parallel duplicates skipped, sums over the model-parallel and
expert-model-parallel groups) and saves its state reshardably, mapped onto the model's sharded
tensors the way Megatron's own non-distributed optimizer does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import chain
from typing import Any, Protocol

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.dist_checkpointing.optimizer import (
    get_param_id_to_sharded_param_map,
    optim_state_to_sharding_state,
)
from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
from megatron.core.transformer.moe.moe_utils import get_updated_expert_bias

from twotower_train import backends
from twotower_train.training.config import GradSync, OptimizerConfig, Precision

__all__ = [
    "AllReduceReducer",
    "GradReducer",
    "MegatronDDPReducer",
    "TorchAdamW",
    "build_grad_reducer",
    "build_optimizer",
    "global_grad_norm",
]


def _is_expert(param: torch.nn.Parameter) -> bool:
    """Megatron marks expert parameters (reduced over expert-DP, not DP) with allreduce=False."""
    return not getattr(param, "allreduce", True)


class GradReducer(Protocol):
    model: torch.nn.Module  # what the forward runs on (possibly a DDP wrapper)

    def zero(self) -> None: ...

    def finish(self, num_tokens: torch.Tensor) -> None: ...


class MegatronDDPReducer:
    """Megatron-Core DDP + ``finalize_model_grads`` (grads land in ``param.main_grad``)."""

    def __init__(self, model: torch.nn.Module, *, bf16: bool, copy_to_grad: bool) -> None:
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

        config = model.config
        config.calculate_per_token_loss = True  # sum in the collective, scale by 1/num_tokens
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=bf16, overlap_grad_reduce=False, use_distributed_optimizer=False
        )
        self.model = DistributedDataParallel(config, ddp_config, model)
        self._copy_to_grad = copy_to_grad  # a torch optimizer reads .grad, Megatron's main_grad

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

    @torch.no_grad()
    def finish(self, num_tokens: torch.Tensor) -> None:
        for p in self.trainable:  # unused experts get zero grads: same collective on every rank
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        dense = [p.grad for p in self.trainable if not _is_expert(p)]
        experts = [p.grad for p in self.trainable if _is_expert(p)]
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
    choice: GradSync, model: torch.nn.Module, trainable: Sequence[torch.nn.Parameter],
    *, bf16: bool,
) -> GradReducer:
    """Megatron DDP on CUDA (``auto``), the explicit all-reduce on CPU (module docstring)."""
    if choice is GradSync.AUTO:
        choice = GradSync.MEGATRON_DDP
    if choice is GradSync.MEGATRON_DDP:
        return MegatronDDPReducer(model, bf16=bf16, copy_to_grad=not backends.cuda_available())
    return AllReduceReducer(model, trainable)


# --------------------------------------------------------------------------------------------
# Optimizer


def global_grad_norm(params: Iterable[torch.nn.Parameter]) -> float:
    """L2 norm of all gradients of the model, each shard counted once (Megatron's definition)."""
    dense = torch.zeros((), dtype=torch.float64)
    expert = torch.zeros((), dtype=torch.float64)
    for p in params:
        if p.grad is None or not param_is_not_tensor_parallel_duplicate(p):
            continue
        sq = p.grad.detach().double().pow(2).sum().cpu()
        if _is_expert(p):
            expert += sq
        else:
            dense += sq
    if dist.is_initialized():
        dist.all_reduce(dense, group=parallel_state.get_model_parallel_group())
        dist.all_reduce(
            expert, group=parallel_state.get_expert_tensor_model_pipeline_parallel_group()
        )
    return math.sqrt(float(dense + expert))


def _param_groups(params: Sequence[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """Megatron's convention: no weight decay on biases and other 1-D parameters (norms)."""
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


class TorchAdamW:
    """``torch.optim.AdamW`` with the parts of Megatron's optimizer interface the trainer uses."""

    def __init__(self, params: Sequence[torch.nn.Parameter], cfg: OptimizerConfig) -> None:
        self.params = list(params)
        self.clip_grad = cfg.clip_grad
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.params, cfg.weight_decay),
            lr=0.0,  # the phase scheduler sets it
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_eps,
        )

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> tuple[bool, float, None]:
        """Clip to ``clip_grad`` and update; returns ``(True, grad norm before clipping, None)``."""
        norm = global_grad_norm(self.params)
        if self.clip_grad > 0:
            coef = self.clip_grad / (norm + 1e-6)
            if coef < 1.0:
                for p in self.params:
                    if p.grad is not None:
                        p.grad.mul_(coef)
        self.optimizer.step()
        return True, norm, None

    def _ordered_params(self) -> list[torch.nn.Parameter]:
        return list(chain.from_iterable(g["params"] for g in self.optimizer.param_groups))

    def _init_state(self) -> None:
        for p in self._ordered_params():
            if not self.optimizer.state[p]:
                self.optimizer.state[p] = {
                    "step": torch.zeros((), dtype=torch.float32),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }

    def sharded_state_dict(self, model_sharded_state_dict: dict, is_loading: bool = False) -> dict:
        """Moments as sharded tensors shaped like their parameters (reshardable across TP/EP);
        the step count, equal for every parameter, as one common value."""
        if is_loading:
            self._init_state()
        state = self.optimizer.state_dict()
        steps = {float(s["step"]) for s in state["state"].values()}
        if len(steps) > 1:
            raise RuntimeError(f"AdamW parameters are at different steps {sorted(steps)}")
        id_map = get_param_id_to_sharded_param_map(model_sharded_state_dict, self._ordered_params())
        optim_state_to_sharding_state(state, id_map, exclude_keys=("step",))
        state["common_step"] = steps.pop() if steps else 0.0
        return state

    def load_state_dict(self, state: dict) -> None:
        step = state.pop("common_step")
        for param_state in state["state"].values():
            param_state["step"] = torch.tensor(float(step), dtype=torch.float32)
        self.optimizer.load_state_dict(state)


def build_optimizer(
    cfg: OptimizerConfig, model: torch.nn.Module, trainable: Sequence[torch.nn.Parameter],
    *, peak_lr: float, min_lr: float,
) -> Any:
    """Megatron's optimizer on CUDA; :class:`TorchAdamW` on CPU (module docstring).

    ``model`` is the DDP-wrapped model on CUDA (Megatron's optimizer reads its grad buffers).
    """
    if not backends.cuda_available():
        return TorchAdamW(trainable, cfg)
    from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
    from megatron.core.optimizer import get_megatron_optimizer

    bf16 = cfg.precision is Precision.BF16
    megatron_cfg = MegatronOptimizerConfig(
        optimizer="adam",
        lr=peak_lr,
        min_lr=min_lr,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        adam_eps=cfg.adam_eps,
        clip_grad=cfg.clip_grad,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=cfg.use_distributed_optimizer,
    )
    return get_megatron_optimizer(megatron_cfg, [model])
