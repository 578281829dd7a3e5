"""adaLN-single time conditioning for the denoiser (PixArt-α style; docs/architecture.md).

The diffusion time ``t`` (the realised masked fraction of a token's block) goes through
sinusoidal features and ONE small global MLP to a ``3·D`` vector; layer ``i`` adds its own
learned ``3·D`` table and splits the sum into (shift, scale, gate)::

    x = x + (1 + gate) * mixer(RMSNorm(x) * (1 + scale) + shift)

The MLP's output layer and the tables start at zero, so at initialisation every denoiser layer
computes exactly the backbone layer. At Nano scale (D=2688, 52 layers, 128 features, hidden
128) this is ≈1.48 M parameters. The parameters are plain (not tensor-parallel): every TP rank
holds a full copy. Under sequence parallelism the denoiser feeds each rank only its own
positions' times (the MLP runs after the sequence scatter), so each rank's adaLN gradients are
partial sums over its positions; the parameters are tagged ``sequence_parallel`` so that
Megatron sums them over the TP group like the norms'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of t ∈ [0, 1] → (..., dim). t is scaled by 1000 like DDPM steps."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )  # (half,)
    angles = (t.float() * 1000.0).unsqueeze(-1) * freqs  # (..., half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


@dataclass
class Modulation:
    """Per-token (shift, scale, gate) for one layer, each (s, b, D)."""

    shift: torch.Tensor
    scale: torch.Tensor
    gate: torch.Tensor

    def pre(self, normed: torch.Tensor) -> torch.Tensor:
        return normed * (1 + self.scale) + self.shift

    def post(self, mixer_out: torch.Tensor) -> torch.Tensor:
        return (1 + self.gate) * mixer_out


class AdaLNSingle(nn.Module):
    """Global time MLP + per-layer tables. ``forward`` gives the shared base; ``layer`` the
    per-layer modulation."""

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        *,
        feature_dim: int = 128,
        mlp_hidden: int = 128,
        sequence_parallel: bool = False,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.hidden_size = hidden_size
        self.feature_dim = feature_dim
        self.mlp = nn.Sequential(
            nn.Linear(feature_dim, mlp_hidden, dtype=dtype),
            nn.SiLU(),
            nn.Linear(mlp_hidden, 3 * hidden_size, dtype=dtype),
        )
        self.tables = nn.Parameter(torch.zeros(num_layers, 3 * hidden_size, dtype=dtype))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)
        for p in self.parameters():
            p.sequence_parallel = sequence_parallel

    def forward(self, t_tokens: torch.Tensor) -> torch.Tensor:
        """t per token (s, b) → shared base modulation (s, b, 3D)."""
        features = timestep_features(t_tokens, self.feature_dim).to(self.tables.dtype)
        return self.mlp(features)

    def layer(self, base: torch.Tensor, layer_index: int) -> Modulation:
        shift, scale, gate = (base + self.tables[layer_index]).chunk(3, dim=-1)
        return Modulation(shift=shift, scale=scale, gate=gate)
