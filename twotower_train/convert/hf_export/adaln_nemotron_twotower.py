"""adaLN-single time conditioning of the Nemotron-TwoTower export, under the released module
names (``t_embedder.mlp.{0,2}``, ``t_block.1``, ``scale_shift_tables.{i}``).

``t_emb = t_block(t_embedder(t))``: 256 sinusoidal features [cos, sin] of 1000·t (max period
10000) → Linear(256, d) → SiLU → Linear(d, d), then SiLU → Linear(d, 3d); layer i's
(shift, scale, gate) = ``scale_shift_tables[i]`` + ``t_emb`` viewed as (3, d).
"""

import math

import torch
from torch import nn

FREQUENCY_DIM = 256


def timestep_features(t: torch.Tensor, dim: int = FREQUENCY_DIM, max_period: float = 10_000.0):
    """Sinusoidal features [cos, sin] of 1000·t, t ∈ [0, 1] → (..., dim), fp32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )  # (half,)
    angles = (t.float() * 1000.0).unsqueeze(-1) * freqs  # (..., half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepEmbedder(nn.Module):
    """t → 256 sinusoidal features → Linear(256, d) → SiLU → Linear(d, d)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(FREQUENCY_DIM, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(t).to(self.mlp[0].weight.dtype))


def time_block(hidden_size: int) -> nn.Sequential:
    """``t_block``: SiLU → Linear(d, 3d) (its Linear is ``t_block.1``)."""
    return nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 3 * hidden_size))


def scale_shift_tables(hidden_size: int, num_layers: int) -> nn.ParameterList:
    """One (3, d) table per layer, rows (shift, scale, gate); the identity modulation (gate 1)."""
    tables = [torch.zeros(3, hidden_size) for _ in range(num_layers)]
    for table in tables:
        table[2] = 1.0
    return nn.ParameterList([nn.Parameter(table) for table in tables])
