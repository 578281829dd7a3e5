"""An independent reference of the released Nemotron-TwoTower's denoiser forward (DESIGN.md §2,
issue 22), written from the released formulas alone: it reads the adaLN parameters by their
released names and does not import :mod:`twotower_train.model.adaln`. It reuses the backbone's
own mixers and conditioning (what it checks is the time conditioning, not the mixers). TP=1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from twotower_train.model.denoiser import BlockwiseConditioning
from twotower_train.model.layers import LayerKind, embed, iter_layers, lm_head, pre_norm
from twotower_train.model.mixers import attention_out, attention_qkv, mamba_forward
from twotower_train.model.two_tower import TwoTowerModel


def released_t_emb(params: dict[str, torch.Tensor], t: torch.Tensor) -> torch.Tensor:
    """t (...) → t_emb (..., 3D): 256 sinusoidal features of 1000·t ([cos, sin], max period
    10000) → Linear → SiLU → Linear (t_embedder), then SiLU → Linear (t_block)."""
    half = 128
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half) / half)
    angles = 1000.0 * t.unsqueeze(-1) * freqs
    features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (..., 256)
    h = F.linear(features, params["t_embedder.mlp.0.weight"], params["t_embedder.mlp.0.bias"])
    h = F.linear(F.silu(h), params["t_embedder.mlp.2.weight"], params["t_embedder.mlp.2.bias"])
    return F.linear(F.silu(h), params["t_block.1.weight"], params["t_block.1.bias"])


def released_denoiser(
    model: TwoTowerModel, clean, noisy, t_block, block_size: int, *, modulate=True, variant=None
):
    """The released denoiser forward (training layout) → logits (b, L, V).

    ``variant`` perturbs the formulas ("post_norm_everywhere", "one_plus_gate") to show that the
    comparison can tell them apart."""
    denoiser = model.denoiser
    backbone = denoiser.backbone
    params = dict(denoiser.adaln.named_parameters())
    hidden_size = model.cfg.hidden_size
    S = block_size
    blocks = clean.shape[1] // S
    with torch.no_grad():
        context = model.context_tower(clean, state_stride=S, logits="none")
    conditioning = BlockwiseConditioning(context, S, blocks)
    t_tokens = t_block.repeat_interleave(S, dim=1).transpose(0, 1)  # (s, b)
    t_emb = released_t_emb(params, t_tokens).unflatten(-1, (3, hidden_size))  # (s, b, 3, D)
    x = embed(backbone, noisy)  # (s, b, D)
    for i, kind, layer in iter_layers(backbone):
        shift, scale, gate = (params[f"scale_shift_tables.{i}"] + t_emb).unbind(-2)
        norm = pre_norm(kind, layer)
        before = kind in (LayerKind.MAMBA, LayerKind.ATTENTION)
        if variant == "post_norm_everywhere":
            before = False
        if not modulate:
            h = norm(x)
        elif before:
            h = norm(x * (1 + scale) + shift)
        else:
            h = norm(x) * (1 + scale) + shift
        if kind is LayerKind.MAMBA:
            out = mamba_forward(
                layer.mixer, h, initial=conditioning.mamba_seed(i), blocks=blocks
            ).out
        elif kind is LayerKind.ATTENTION:
            q, k, v = attention_qkv(layer.self_attention, h)
            out = attention_out(
                layer.self_attention, conditioning.attend(i, q, k, v, causal_in_block=False)
            )
        else:
            out, _ = layer.mlp(h)
        if not modulate:
            x = x + out
        else:
            x = x + (1 + gate if variant == "one_plus_gate" else gate) * out
    return lm_head(backbone, x)
