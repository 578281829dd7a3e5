"""GatedRMSNorm against transformers' NemotronH gated norm (the numerics our backbone must match).

Tolerance 1e-6 in fp32: both normalise the same fp32 values with rsqrt over 8-24 channels;
only the reduction order may differ (ulp level).
"""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHRMSNormGated

from twotower_train.ops.gated_norm import GatedRMSNorm

TOL = dict(atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("with_z", [True, False])
def test_matches_transformers_nemotron_h(groups, with_z):
    torch.manual_seed(0)
    d = 24
    ours = GatedRMSNorm(d, eps=1e-5, group_size=d // groups, norm_before_gate=False)
    theirs = NemotronHRMSNormGated(d, group_size=d // groups, eps=1e-5)
    weight = torch.randn(d)
    with torch.no_grad():
        ours.weight.copy_(weight)
        theirs.weight.copy_(weight)
    x, z = torch.randn(2, 7, d) * 3, torch.randn(2, 7, d)
    gate = z if with_z else None
    torch.testing.assert_close(ours(x, gate), theirs(x, gate), **TOL)


def test_norm_before_gate_and_default_group():
    torch.manual_seed(1)
    norm = GatedRMSNorm(8, eps=1e-5)  # group_size None = one group over all channels
    assert torch.all(norm.weight == 1) and norm.bias is None
    x, z = torch.randn(3, 8), torch.randn(3, 8)
    expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * F.silu(z)
    norm.norm_before_gate = True
    torch.testing.assert_close(norm(x, z), expected, **TOL)


def test_bf16_input_follows_transformers_cast_order():
    torch.manual_seed(2)
    ours = GatedRMSNorm(16, group_size=8, norm_before_gate=False, dtype=torch.bfloat16)
    theirs = NemotronHRMSNormGated(16, group_size=8, eps=1e-5).to(torch.bfloat16)
    x, z = torch.randn(4, 16, dtype=torch.bfloat16), torch.randn(4, 16, dtype=torch.bfloat16)
    assert torch.equal(ours(x, z), theirs(x, z))  # same op order -> bitwise equal


def test_sharded_state_dict_shards_weight_along_dim0():
    # a one-process gloo group is enough to build the sharded tensors
    created = not dist.is_initialized()
    if created:
        store = dist.FileStore(os.path.join(tempfile.mkdtemp(), "store"), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        norm = GatedRMSNorm(12, group_size=4, norm_before_gate=False)
        norm.tp_group = dist.group.WORLD
        sd = norm.sharded_state_dict(
            prefix="mixer.norm.", metadata={"dp_cp_group": dist.group.WORLD}
        )
        sh = sd["mixer.norm.weight"]
        assert sh.key == "mixer.norm.weight"
        assert tuple(sh.global_shape) == (12,) and sh.data is norm.weight
        assert len(sh.axis_fragmentations) == 1 and sh.axis_fragmentations[0] == 1
    finally:
        if created:
            dist.destroy_process_group()
