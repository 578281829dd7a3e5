"""adaLN-single time conditioning for the denoiser, as the released Nemotron-TwoTower has it
(DESIGN.md §2; docs/architecture.md).

The diffusion time ``t`` (the realised masked fraction of a token's block) becomes one ``3·D``
vector per token, shared by every layer::

    t_emb = t_block(t_embedder(t))
    t_embedder = 256 sinusoidal features of 1000·t → Linear(256, D) → SiLU → Linear(D, D)
    t_block    = SiLU → Linear(D, 3·D)

Layer ``i`` adds its own table ``scale_shift_tables[i]`` (3, D) to ``t_emb`` viewed as (3, D) and
reads (shift, scale, gate) off the three rows. Where the modulation lands depends on the layer:

* Mamba and attention (``pre_norm``): ``x + gate · mixer(RMSNorm(x · (1 + scale) + shift))``;
* MoE and MLP (``post_norm``): ``x + gate · mixer(RMSNorm(x) · (1 + scale) + shift)``.

At initialisation the gate rows of the tables are 1, their shift and scale rows 0 and the last
``t_block`` Linear is zero, so every denoiser layer computes exactly the backbone layer. The
module names (``t_embedder.mlp.{0,2}``, ``t_block.1``, ``scale_shift_tables.{i}``) are the
released checkpoint's. At Nano scale (D=2688, 52 layers) this is 30.02 M parameters.

The parameters are plain (not tensor-parallel): every TP rank holds a full copy. Under sequence
parallelism the denoiser feeds each rank only its own positions' times (``t_emb`` is computed
after the sequence scatter), so each rank's gradients are partial sums over its positions; the
parameters are tagged ``sequence_parallel`` so that Megatron sums them over the TP group like the
norms'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

FREQUENCY_DIM = 256
"""Sinusoidal features of the time embedder (the released model's)."""


def timestep_features(
    t: torch.Tensor, dim: int = FREQUENCY_DIM, max_period: float = 10_000.0
) -> torch.Tensor:
    """Sinusoidal features [cos, sin] of 1000·t, t ∈ [0, 1] → (..., dim), fp32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )  # (half,)
    angles = (t.float() * 1000.0).unsqueeze(-1) * freqs  # (..., half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


@dataclass
class Modulation:
    """Per-token (shift, scale, gate) of one layer, each (..., D)."""

    shift: torch.Tensor
    scale: torch.Tensor
    gate: torch.Tensor

    def modulate(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1 + self.scale) + self.shift

    def pre_norm(self, norm, x: torch.Tensor) -> torch.Tensor:
        """Mamba / attention: modulate, then normalise."""
        return norm(self.modulate(x))

    def post_norm(self, norm, x: torch.Tensor) -> torch.Tensor:
        """MoE / MLP: normalise, then modulate."""
        return self.modulate(norm(x))

    def residual(self, x: torch.Tensor, mixer_out: torch.Tensor) -> torch.Tensor:
        return x + self.gate * mixer_out


class TimestepEmbedder(nn.Module):
    """t → 256 sinusoidal features → Linear(256, D) → SiLU → Linear(D, D)."""

    def __init__(self, hidden_size: int, *, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(FREQUENCY_DIM, hidden_size, dtype=dtype),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, dtype=dtype),
        )

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """nn.Linear's default init (U(±1/sqrt(fan_in)) for weight and bias) drawn from
        ``generator``: every rank of every layout draws the same values, whatever the modules
        built before it took from the global RNG (local experts differ under EP, shards under TP)."""
        for linear in (self.mlp[0], self.mlp[2]):
            bound = 1.0 / math.sqrt(linear.in_features)
            nn.init.uniform_(linear.weight, -bound, bound, generator=generator)
            nn.init.uniform_(linear.bias, -bound, bound, generator=generator)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(t).to(self.mlp[0].weight.dtype))


class AdaLNSingle(nn.Module):
    """``forward`` gives the shared ``t_emb`` (…, 3D); ``layer`` one layer's modulation."""

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        *,
        sequence_parallel: bool = False,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.hidden_size = hidden_size
        self.t_embedder = TimestepEmbedder(hidden_size, dtype=dtype)
        # Seeded from the process's seed (the training seed; equal on every rank), not from the
        # global RNG's current state, which depends on what each rank built before.
        self.t_embedder.reset_parameters(torch.Generator().manual_seed(torch.initial_seed()))
        self.t_block = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, 3 * hidden_size, dtype=dtype)
        )
        self.scale_shift_tables = nn.ParameterList(
            [nn.Parameter(torch.zeros(3, hidden_size, dtype=dtype)) for _ in range(num_layers)]
        )
        self.reset_modulation()
        for p in self.parameters():
            p.sequence_parallel = sequence_parallel

    @torch.no_grad()
    def reset_modulation(self) -> None:
        """The identity modulation: gate rows 1, shift/scale rows 0, last t_block Linear zero."""
        nn.init.zeros_(self.t_block[1].weight)
        nn.init.zeros_(self.t_block[1].bias)
        for table in self.scale_shift_tables:
            table.zero_()
            table[2] = 1.0

    def forward(self, t_tokens: torch.Tensor) -> torch.Tensor:
        """t per token (...) → t_emb (..., 3D)."""
        return self.t_block(self.t_embedder(t_tokens))

    def layer(self, t_emb: torch.Tensor, layer_index: int) -> Modulation:
        rows = self.scale_shift_tables[layer_index] + t_emb.unflatten(-1, (3, self.hidden_size))
        shift, scale, gate = rows.unbind(-2)
        return Modulation(shift=shift, scale=scale, gate=gate)
