"""BackboneConfig ↔ NemotronHConfig: lossless round trip; unsupported HF semantics are refused."""

from __future__ import annotations

import math

import pytest

from tests.convert.models import parity_config
from twotower_train.convert.nemotron_h import (
    ConversionError,
    backbone_config_from_hf,
    hf_config_from_backbone,
)
from twotower_train.model.config import preset


@pytest.mark.parametrize("name", ["tiny", "nano_30b_a3b"])
def test_round_trip(name):
    cfg = preset(name)
    not_in_hf = {
        "moe_token_dispatcher": cfg.moe_token_dispatcher,
        "num_layers": cfg.num_layers,
        # Training numerics (the Nano preset's are the released model's), not HF config fields.
        "moe_router_dtype": cfg.moe_router_dtype,
        "denoiser_scan_dtype": cfg.denoiser_scan_dtype,
    }
    assert backbone_config_from_hf(hf_config_from_backbone(cfg), **not_in_hf) == cfg


def test_hf_fields_for_nano():
    hf = hf_config_from_backbone(preset("nano_30b_a3b"))
    assert hf.hybrid_override_pattern == preset("nano_30b_a3b").pattern
    assert (hf.num_key_value_heads, hf.n_groups, hf.n_routed_experts) == (2, 8, 128)
    assert (hf.num_experts_per_tok, hf.routed_scaling_factor, hf.norm_topk_prob) == (6, 2.5, True)
    assert hf.mlp_hidden_act == "relu2" and hf.mask_token_id == 3
    assert hf.time_step_min == 0.0 and list(hf.time_step_limit) == [0.0, math.inf]


def test_legacy_pattern_key_and_eos_list():
    hf = hf_config_from_backbone(parity_config()).to_dict()
    hf["hybrid_override_pattern"] = "M*E-"
    del hf["layers_block_type"]
    hf["eos_token_id"] = [2, 11]
    cfg = backbone_config_from_hf(hf)
    assert cfg.pattern == "M*E-" and cfg.eos_token_id == 2


@pytest.mark.parametrize(
    "change, message",
    [
        ({"norm_topk_prob": False}, "norm_topk_prob=False with num_experts_per_tok=2"),
        ({"n_group": 2, "topk_group": 2}, "n_group=2"),
        ({"mlp_hidden_act": "silu"}, "mlp_hidden_act='silu'"),
        ({"moe_latent_size": 32}, "moe_latent_size=32"),
        ({"tie_word_embeddings": True}, "tie_word_embeddings=True"),
        ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon=1e-06"),
    ],
)
def test_unsupported_hf_semantics_are_refused(change, message):
    hf = hf_config_from_backbone(parity_config()).to_dict() | change
    with pytest.raises(ConversionError, match=message):
        backbone_config_from_hf(hf)


def test_dt_clamp_in_hf_config_warns():
    hf = hf_config_from_backbone(parity_config()).to_dict() | {"time_step_min": 0.001}
    with pytest.warns(UserWarning, match="time_step_min=0.001"):
        backbone_config_from_hf(hf)
