"""Megatron-Core's optimizer behind the trainer's optimizer interface (the CUDA path).

:class:`MegatronAdamW` wraps ``get_megatron_optimizer``: AdamW over fp32 main weights of bf16
parameters, optionally the distributed optimizer (state and main weights sharded over the
data-parallel ranks), global-norm clipping. It saves the optimizer state in Megatron's
``fully_reshardable`` format: every state tensor shaped like its parameter and mapped onto the
model's sharded tensors, so a run may resume at another TP / EP / DP layout.

Two things in megatron-core 0.19 need handling here, measured by running its distributed
optimizer on the CPU (``tests/training/test_megatron_optimizer.py``):

* **fp32 parameters in a bf16 model** (Mamba's ``A_log`` and ``D``, fp32 by Megatron's design).
  The distributed optimizer orders each parameter group's main weights fp32-first but maps model
  parameters to them in bucket order, so its checkpoint conversion pairs a parameter with
  another one's state (a shape error on save): the fp32 parameters get a group of their own
  through a config override that changes nothing else (``optimizer="adam"``, the base
  optimizer). The non-distributed bf16 optimizer numbers optimizer state over bf16 parameters
  only and cannot save such a model at all, so bf16 needs ``use_distributed_optimizer=true``
  (with one data-parallel rank it is the same optimizer).
* **torch AdamW's per-parameter ``step``** (Megatron falls back to ``torch.optim.AdamW`` without
  Transformer Engine or apex): a fresh optimizer has no state to build a loading state dict from,
  and ``fully_reshardable``'s loader asks every state tensor — ``step`` included — of its
  source; the step it restores from the parameter groups is one tensor shared by all parameters,
  which torch's AdamW then increments once per parameter. So the state is initialised with
  ``step`` before loading, the parameter state is loaded with the ``step`` tensors set aside, and
  each parameter gets its own copy back.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["FORMAT", "MegatronAdamW"]

FORMAT = {"distrib_optim_sharding_type": "fully_reshardable", "chained_optim_avoid_prefix": True}
"""Metadata of Megatron's ``sharded_state_dict``: model-space optimizer state, one key per
parameter whatever the optimizer chaining (dense / expert) — reshardable across TP, EP and DP."""


def _split_fp32_params(config: Any) -> dict:
    """Megatron's standard overrides (no weight decay on biases and 1-D parameters) plus a
    group of their own for fp32 parameters (module docstring)."""
    from megatron.core.optimizer import ParamKey, get_standard_config_overrides
    from megatron.core.optimizer.optimizer_config import ParamPredicate

    overrides = get_standard_config_overrides(config)
    fp32 = ParamPredicate(name="fp32_param", fn=lambda p: p.dtype == torch.float32)
    overrides[ParamKey(predicate=fp32)] = {"optimizer": config.optimizer}
    return overrides


class MegatronAdamW:
    """Megatron's optimizer with the parts of its interface the trainer and checkpoints use."""

    def __init__(self, config: Any, model: torch.nn.Module) -> None:
        from megatron.core.optimizer import get_megatron_optimizer
        from megatron.core.optimizer.distrib_optimizer import HAVE_APEX_OR_TE

        from twotower_train.errors import ConfigError

        if config.bf16 and not config.use_distributed_optimizer:
            raise ConfigError(
                "optimizer.precision=bf16 with optimizer.use_distributed_optimizer=false: "
                "megatron-core 0.19's non-distributed bf16 optimizer cannot checkpoint fp32 "
                "parameters (Mamba's A_log, D); set optimizer.use_distributed_optimizer=true "
                "(with one data-parallel rank it is the same optimizer)"
            )
        self.config = config
        overrides = _split_fp32_params(config) if config.bf16 else None
        self.optimizer = get_megatron_optimizer(config, [model], config_overrides=overrides)
        self.distributed = config.use_distributed_optimizer
        self._torch_adam = not HAVE_APEX_OR_TE  # per-parameter `step` tensors

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def _parts(self) -> list[Any]:
        """The optimizers Megatron chained (dense and expert parameters), or the one."""
        return list(getattr(self.optimizer, "chained_optimizers", [self.optimizer]))

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def step(self) -> tuple[bool, float, int | None]:
        """Unscale/copy grads to the main weights, clip, update, copy back (and gather the
        parameters unless overlapped); returns ``(success, grad norm before clipping, zeros)``."""
        return self.optimizer.step()

    def _init_torch_state(self) -> None:
        for part in self._parts():
            inner = part.optimizer
            for group in inner.param_groups:
                for p in group["params"]:
                    if not inner.state[p]:
                        inner.state[p] = {
                            "step": torch.zeros(
                                (), dtype=torch.float32, device="cpu"
                            ),  # torch's place
                            "exp_avg": torch.zeros_like(p),
                            "exp_avg_sq": torch.zeros_like(p),
                        }

    def sharded_state_dict(self, model_sharded_state_dict: dict, is_loading: bool = False) -> dict:
        if is_loading and self._torch_adam:
            self._init_torch_state()
        return self.optimizer.sharded_state_dict(
            model_sharded_state_dict, is_loading, metadata=dict(FORMAT)
        )

    def load_state_dict(self, state: Any) -> None:
        if not (self.distributed and self._torch_adam):
            self.optimizer.load_state_dict(state)
            return
        parts = self._parts()
        states = [state] if len(parts) == 1 else [state[k] for k in sorted(state)]
        for part, part_state in zip(parts, states, strict=True):
            param_state = part_state.pop("param_state")
            part_state.pop("param_state_sharding_type")
            part.load_state_dict(part_state)  # groups (and the step they carry), grad scaler
            inner = part.optimizer.state
            steps = {p: s.pop("step") for p, s in inner.items() if "step" in s}
            part.load_parameter_state_from_fully_reshardable(param_state)
            for p, step in steps.items():
                inner[p]["step"] = step.clone()
