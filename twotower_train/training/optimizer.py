"""The optimizer: Megatron's on CUDA, ``torch.optim.AdamW`` behind the same interface on CPU.

On CUDA with Megatron DDP, :class:`MegatronAdamW` — Megatron's optimizer (AdamW, bf16 parameters
with fp32 main weights, the distributed optimizer, grad clipping built in); on CPU (and with the
``training.grad_sync=allreduce`` reference) ``torch.optim.AdamW`` in :class:`TorchAdamW`, because
Megatron's optimizer allocates with ``device='cuda'`` and checks ``torch.cuda.FloatTensor``
types. :class:`TorchAdamW` clips by the same global norm Megatron computes (each shard once:
tensor-parallel duplicates skipped, sums over the model-parallel and expert-model-parallel
groups). Both save their state reshardably (TP / EP / DP may change on resume), mapped onto the
model's sharded tensors; both offer ``sharded_state_dict`` / ``load_state_dict`` to
:mod:`twotower_train.training.checkpoint`.

:func:`megatron_configs` derives the DDP config and Megatron's optimizer config from the one
recipe key ``optimizer.use_distributed_optimizer`` (Megatron asserts that they agree).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import chain
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.dist_checkpointing.optimizer import (
    get_param_id_to_sharded_param_map,
    optim_state_to_sharding_state,
)
from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

from twotower_train import backends, distributed
from twotower_train.training.config import GradSync, OptimizerConfig, Precision
from twotower_train.training.grad_reduce import GradReducer, build_grad_reducer, is_expert_param
from twotower_train.training.megatron_optimizer import MegatronAdamW

__all__ = [
    "MegatronAdamW",
    "MegatronConfigs",
    "TorchAdamW",
    "build_optimizer",
    "global_grad_norm",
    "megatron_configs",
    "uses_megatron_optimizer",
]


def global_grad_norm(params: Iterable[torch.nn.Parameter]) -> float:
    """L2 norm of all gradients of the model, each shard counted once (Megatron's definition)."""
    dense = torch.zeros((), dtype=torch.float64, device=distributed.device())
    expert = torch.zeros((), dtype=torch.float64, device=distributed.device())
    for p in params:
        if p.grad is None or not param_is_not_tensor_parallel_duplicate(p):
            continue
        sq = p.grad.detach().double().pow(2).sum()
        if is_expert_param(p):
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
                    "step": torch.zeros((), dtype=torch.float32, device="cpu"),  # torch's place
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
            param_state["step"] = torch.tensor(float(step), dtype=torch.float32, device="cpu")
        self.optimizer.load_state_dict(state)


def uses_megatron_optimizer(grad_sync: GradSync) -> bool:
    """Megatron's optimizer needs CUDA and the grad buffers of Megatron DDP."""
    return backends.cuda_available() and grad_sync is not GradSync.ALLREDUCE


class MegatronConfigs(NamedTuple):
    ddp: Any  # megatron.core.distributed.DistributedDataParallelConfig
    optimizer: Any  # megatron.core.optimizer.OptimizerConfig


def megatron_configs(
    cfg: OptimizerConfig, *, megatron_optimizer: bool, peak_lr: float = 0.0, min_lr: float = 0.0
) -> MegatronConfigs:
    """The DDP config and Megatron's optimizer config, both from ``cfg``.

    ``use_distributed_optimizer`` and ``overlap_param_gather`` take effect only where Megatron's
    optimizer runs (``megatron_optimizer``): DDP then reduce-scatters gradients into the
    optimizer's shards; for :class:`TorchAdamW` it must all-reduce them.
    """
    from megatron.core.distributed import DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig

    bf16 = cfg.precision is Precision.BF16
    sharded = cfg.use_distributed_optimizer and megatron_optimizer
    overlap_gather = cfg.overlap_param_gather and sharded
    ddp = DistributedDataParallelConfig(
        grad_reduce_in_fp32=bf16,
        overlap_grad_reduce=cfg.overlap_grad_reduce,
        overlap_param_gather=overlap_gather,
        use_distributed_optimizer=sharded,
    )
    optimizer = MegatronOptimizerConfig(
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
        use_distributed_optimizer=sharded,
        overlap_param_gather=overlap_gather,
    )
    return MegatronConfigs(ddp=ddp, optimizer=optimizer)


def build_optimizer(
    cfg: OptimizerConfig,
    model: torch.nn.Module,
    trainable: Sequence[torch.nn.Parameter],
    *,
    grad_sync: GradSync,
    peak_lr: float,
    min_lr: float,
) -> Any:
    """:class:`MegatronAdamW` where :func:`uses_megatron_optimizer`, else :class:`TorchAdamW`.

    ``model`` is the DDP-wrapped model (Megatron's optimizer reads its grad buffers).
    """
    if not uses_megatron_optimizer(grad_sync):
        return TorchAdamW(trainable, cfg)
    configs = megatron_configs(cfg, megatron_optimizer=True, peak_lr=peak_lr, min_lr=min_lr)
    return MegatronAdamW(configs.optimizer, model)


def freeze_all_but(
    module: torch.nn.Module, trainable: Iterable[torch.nn.Parameter]
) -> list[torch.nn.Parameter]:
    """Only ``trainable`` get gradients — and so optimizer state and DDP buckets; every other
    parameter of ``module`` (a frozen tower) is frozen. Returns ``trainable`` as a list."""
    trainable = list(trainable)
    if not trainable:
        raise ValueError("the objective named no trainable parameter")
    chosen = {id(p) for p in trainable}
    for p in module.parameters():
        p.requires_grad_(id(p) in chosen)
    return trainable


def build_reducer_and_optimizer(
    cfg: Any, model: torch.nn.Module, trainable: Sequence[torch.nn.Parameter]
) -> tuple[GradReducer, Any]:
    """The gradient reducer (wrapping ``model``) and the optimizer a
    :class:`~twotower_train.training.config.TrainConfig` asks for, at the first phase's lr —
    what the trainer builds, and what a converter needs to write a checkpoint training resumes.
    """
    training = cfg.training
    megatron = uses_megatron_optimizer(training.grad_sync)
    reducer = build_grad_reducer(
        training.grad_sync,
        model,
        trainable,
        ddp_config=megatron_configs(cfg.optimizer, megatron_optimizer=megatron).ddp,
        megatron_optimizer=megatron,
    )
    first_lr = cfg.curriculum.phases[0].lr
    optimizer = build_optimizer(
        cfg.optimizer,
        reducer.model,
        trainable,
        grad_sync=training.grad_sync,
        peak_lr=first_lr.peak,
        min_lr=first_lr.min,
    )
    return reducer, optimizer
