"""The name table covers exactly the tensors of both models, and its names agree with Megatron's
own local-spec key map and distributed-checkpoint keys."""

from __future__ import annotations

import torch

from tests.convert.models import parity_config, random_hf_model
from twotower_train.convert.hf_names import (
    LOCAL_NAMES,
    checkpoint_layout,
    fuse_qkv,
    module_layout,
    resolve,
    split_qkv,
)
from twotower_train.model.backbone import build_backbone, local_stack_spec


def _params(model):
    return {k for k in model.state_dict() if not k.endswith("_extra_state")}


def test_table_covers_the_megatron_model_exactly(single_process):
    cfg = parity_config()
    names = [m.megatron for m in resolve(cfg, "local")]
    assert len(names) == len(set(names))
    assert set(names) == _params(build_backbone(cfg))


def test_table_covers_the_hf_checkpoint_exactly():
    cfg = parity_config()
    names = [n for m in resolve(cfg) for n in m.hf]
    assert len(names) == len(set(names))
    assert set(names) == set(checkpoint_layout(random_hf_model(cfg).state_dict()))


def test_canonical_names_are_the_dist_checkpoint_keys(single_process):
    """Outside experts (stacked in dist-ckpt) and conv1d (``conv1d.weight`` there), the TE names
    are exactly the keys the local model writes to a distributed checkpoint."""
    cfg = parity_config()
    model = build_backbone(cfg)
    sharded = {k: v.key for k, v in model.sharded_state_dict().items() if "_extra_state" not in k}
    for te, local in zip(resolve(cfg, "te"), resolve(cfg, "local")):
        if ".experts.linear_fc" in te.megatron or ".conv1d_" in te.megatron:
            continue
        assert sharded[local.megatron] == te.megatron


def test_local_names_invert_the_local_spec_key_map():
    specs = local_stack_spec(parity_config()).submodules
    layer_spec = {"M": specs.mamba_layer, "*": specs.attention_layer, "-": specs.mlp_layer}
    for symbol, spec in layer_spec.items():
        ((local_prefix, te_prefix),) = spec.submodules.sharded_state_dict_keys_map.items()
        ((te, local),) = LOCAL_NAMES[symbol].items()
        prefix = "decoder.layers.{i}."
        assert te == prefix + te_prefix + "weight" and local == prefix + local_prefix + "weight"


def test_qkv_layout_is_interleaved_per_group():
    cfg = parity_config()  # 4 heads, 2 groups, head dim 16
    d, h, g, rep = cfg.head_dim, cfg.hidden_size, cfg.num_query_groups, 2
    q = torch.randn(cfg.num_attention_heads * d, h)
    k, v = torch.randn(g * d, h), torch.randn(g * d, h)
    qkv = fuse_qkv(q, k, v, cfg)
    for group in range(g):
        rows = qkv[group * (rep + 2) * d : (group + 1) * (rep + 2) * d]
        assert torch.equal(rows[: rep * d], q[group * rep * d : (group + 1) * rep * d])
        assert torch.equal(rows[rep * d : (rep + 1) * d], k[group * d : (group + 1) * d])
        assert torch.equal(rows[(rep + 1) * d :], v[group * d : (group + 1) * d])
    back = split_qkv(qkv, cfg)
    assert all(torch.equal(a, b) for a, b in zip(back, (q, k, v)))
    assert all(t.untyped_storage().data_ptr() != qkv.untyped_storage().data_ptr() for t in back)


def test_module_and_checkpoint_layouts_invert():
    cfg = parity_config()
    module_state = random_hf_model(cfg).state_dict()
    ckpt = checkpoint_layout(module_state)
    assert all(k.startswith(("backbone.", "lm_head.")) for k in ckpt)
    assert "backbone.layers.2.mixer.experts.3.down_proj.weight" in ckpt
    again = module_layout(ckpt, cfg)
    assert again.keys() == module_state.keys()
    assert all(torch.equal(again[k], module_state[k]) for k in module_state)
