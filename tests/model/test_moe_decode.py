"""The decoding MoE path (model/moe_decode.py) against Megatron's MoELayer forward: same output
for one token and for a block, with every expert computed (few experts) and with only the
chosen ones gathered (many experts), shared expert included. fp32: the same products summed in
another order, so 1e-5."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from twotower_train.model.layers import LayerKind, iter_layers
from twotower_train.model.moe_decode import _supported, moe_decode
from twotower_train.model.two_tower import TwoTowerModel


def _moe_layers(cfg):
    torch.manual_seed(0)
    model = TwoTowerModel.build(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # spread the router so tokens pick different experts
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    backbone = model.context_tower.backbone
    return [layer.mlp for _, kind, layer in iter_layers(backbone) if kind is LayerKind.MOE]


@pytest.mark.parametrize("experts", [4, 16])
@pytest.mark.parametrize("tokens", [1, 16])
def test_equals_megatron_moe(single_process, tiny_cfg, experts, tokens):
    cfg = dataclasses.replace(tiny_cfg, num_experts=experts)
    layers = _moe_layers(cfg)
    assert layers and all(_supported(mlp) for mlp in layers)
    hidden = torch.randn(tokens, 2, cfg.hidden_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for mlp in layers:
            expected, _ = mlp(hidden)
            torch.testing.assert_close(moe_decode(mlp, hidden), expected, atol=1e-5, rtol=1e-5)


def test_stacked_weights_follow_updates(single_process, tiny_cfg):
    mlp = _moe_layers(tiny_cfg)[0]
    hidden = torch.randn(3, 1, tiny_cfg.hidden_size)
    with torch.no_grad():
        moe_decode(mlp, hidden)
        mlp.experts.local_experts[1].linear_fc1.weight.mul_(2.0)  # an optimizer step, in place
        torch.testing.assert_close(moe_decode(mlp, hidden), mlp(hidden)[0], atol=1e-5, rtol=1e-5)
