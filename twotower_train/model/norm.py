"""RMSNorm for the local (non-Transformer-Engine) layer specs.

Megatron-Core's ``WrappedTorchNorm`` refuses sequence parallelism, and the hybrid stack's final
norm is hard-wired to ``TENorm``; neither works without Transformer Engine. This norm follows
Megatron's ``LayerNormBuilder`` protocol (``config, hidden_size, eps``), computes in fp32 like
Nemotron-H's reference implementation, and tags its weight ``sequence_parallel`` so Megatron's
DDP all-reduces its gradient across the TP group when SP is on.
"""

from __future__ import annotations

import torch
from megatron.core.transformer import TransformerConfig


class RMSNorm(torch.nn.Module):
    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **_):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(
            torch.ones(hidden_size, dtype=config.params_dtype, device=_init_device(config))
        )
        self.weight.sequence_parallel = config.sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def _init_device(config: TransformerConfig) -> torch.device | None:
    # Follow Megatron's convention: CPU init when asked, otherwise the current default device.
    return torch.device("cpu") if config.use_cpu_initialization else None
