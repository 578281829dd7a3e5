"""Backbone builder: all layer types run forward/backward; config errors are clear."""

from __future__ import annotations

import pytest
import torch

from twotower_train.errors import ConfigError
from twotower_train.model.backbone import build_backbone, forward_logits, transformer_config
from twotower_train.model.config import BackboneConfig, ParallelConfig, preset
from twotower_train.model.sizes import check_parallel_layout, count_parameters


def test_forward_backward_every_layer_type(single_process, tiny_cfg):
    assert set(tiny_cfg.pattern) == {"M", "*", "E", "-"}
    model = build_backbone(tiny_cfg)
    tokens = torch.randint(0, tiny_cfg.vocab_size, (2, 32))
    logits = forward_logits(model, tokens)
    assert logits.shape == (2, 32, tiny_cfg.vocab_size)
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)
    )
    assert torch.isfinite(loss)
    loss.backward()
    for i, layer in enumerate(model.decoder.layers):
        grads = [p.grad for p in layer.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), f"layer {i} has params without grads"
        assert any(g.abs().sum() > 0 for g in grads), f"layer {i} got all-zero grads"


def test_causal(single_process, tiny_cfg):
    """Changing a future token leaves earlier logits untouched (Mamba, attention, MoE, MLP)."""
    model = build_backbone(tiny_cfg).eval()
    tokens = torch.randint(4, tiny_cfg.vocab_size, (1, 32))
    changed = tokens.clone()
    changed[0, 20] = (tokens[0, 20] + 1) % tiny_cfg.vocab_size
    with torch.no_grad():
        a, b = forward_logits(model, tokens), forward_logits(model, changed)
    torch.testing.assert_close(a[:, :20], b[:, :20], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 20:], b[:, 20:])


def test_parameter_count_matches_build(single_process, tiny_cfg):
    model = build_backbone(tiny_cfg)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(tiny_cfg)[0]


def test_nano_30b_a3b_parameter_counts_on_meta(single_process):
    cfg = preset("nano_30b_a3b")
    with torch.device("meta"):
        model = build_backbone(cfg, transformer_config(cfg, use_cpu_initialization=True))
    built = sum(p.numel() for p in model.parameters())
    total, active = count_parameters(cfg)
    assert built == total
    # Public figures: ~31.6B total, ~3.2B active per token.
    assert abs(total / 1e9 - 31.6) < 0.05, total
    assert abs(active / 1e9 - 3.2) < 0.05, active
    counts = {c: cfg.pattern.count(c) for c in "M*E"}
    assert counts == {"M": 23, "*": 6, "E": 23}


def test_unknown_pattern_character():
    with pytest.raises(ConfigError, match=r"unknown layer character.*'X'"):
        BackboneConfig(pattern="M*X-")


def test_pattern_num_layers_mismatch():
    with pytest.raises(ConfigError, match="num_layers=5 but model.pattern has 4"):
        BackboneConfig(pattern="M*E-", num_layers=5)


def test_heads_not_divisible_by_tensor_parallel(tiny_cfg):
    with pytest.raises(
        ConfigError, match="num_attention_heads=4 is not divisible by parallelism.tensor_parallel=3"
    ):
        check_parallel_layout(tiny_cfg, ParallelConfig(tensor_parallel=3))


def test_experts_not_divisible_by_expert_parallel(tiny_cfg):
    with pytest.raises(
        ConfigError, match="num_experts=4 is not divisible by parallelism.expert_parallel=3"
    ):
        check_parallel_layout(tiny_cfg, ParallelConfig(expert_parallel=3))


def test_special_token_outside_vocab():
    with pytest.raises(ConfigError, match="mask_token_id=9000 is outside the vocabulary"):
        BackboneConfig(mask_token_id=9000)
