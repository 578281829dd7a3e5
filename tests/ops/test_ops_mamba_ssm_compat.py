"""mamba_ssm-compatible entry points (twotower_train.ops.mamba_ssm_compat).

Checked against (a) composing conv + the naive SSD recurrence + gating by hand and
(b) transformers' NemotronH Mamba-2 mixer (its own pure-torch chunked path).
Tolerances (fp32): 1e-4 abs/rel -- outputs are O(1-10) sums over <= 40 steps and 16-channel
projections; reordering costs ~1e-6, a layout or gating bug costs O(1).
"""

import pytest
import torch
import torch.nn.functional as F

from twotower_train.ops.conv import causal_conv1d
from twotower_train.ops.gated_norm import gated_rms_norm
from twotower_train.ops.mamba_ssm_compat import (
    mamba_chunk_scan_combined,
    mamba_split_conv1d_scan_combined,
)
from twotower_train.ops.ssd import ssd_sequential

TOL = dict(atol=1e-4, rtol=1e-4)
H, P, G, N, W = 4, 3, 2, 5, 4
DIM = H * P


def params(seed=0, d_hdim=False, d_nonssm=0, b=2, l=37):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    conv_dim = DIM + 2 * G * N
    return dict(
        zxbcdt=r(b, l, 2 * d_nonssm + 2 * DIM + 2 * G * N + H),
        conv_w=r(conv_dim, W) * 0.5,
        conv_b=r(conv_dim) * 0.1,
        dt_bias=r(H) * 0.5,
        A=-(torch.rand(H, generator=g) + 0.2),
        D=r(H, P) if d_hdim else r(H),
        init=r(b, H, P, N),
    )


def by_hand(p, d_nonssm=0, init=None):
    """Split [zx0, z, xBC, dt], conv+silu, naive recurrence with softplus(dt + bias), gate."""
    zx0, z, xBC, dt = torch.split(p["zxbcdt"], [2 * d_nonssm, DIM, DIM + 2 * G * N, H], dim=-1)
    xBC, _, _ = causal_conv1d(xBC, p["conv_w"], p["conv_b"], activation="silu")
    x, B, C = torch.split(xBC, [DIM, G * N, G * N], dim=-1)
    out = ssd_sequential(
        x.reshape(*x.shape[:2], H, P),
        dt,
        p["A"],
        B.reshape(*B.shape[:2], G, N),
        C.reshape(*C.shape[:2], G, N),
        D=p["D"],
        z=z.reshape(*z.shape[:2], H, P),
        dt_bias=p["dt_bias"],
        dt_softplus=True,
        initial_state=init,
    )
    y = out.y.reshape(*x.shape[:2], DIM)
    if d_nonssm:
        y = torch.cat([F.silu(zx0[..., :d_nonssm]) * zx0[..., d_nonssm:], y], dim=-1)
    return y, out.final_state


@pytest.mark.parametrize("d_hdim", [False, True])
@pytest.mark.parametrize("chunk", [8, 16])
def test_split_conv1d_scan_matches_composition(d_hdim, chunk):
    p = params(d_hdim=d_hdim)
    # megatron's _ssm_training call: no rmsnorm_weight, norm_before_gate=False, seq_idx=None
    y = mamba_split_conv1d_scan_combined(
        p["zxbcdt"],
        p["conv_w"],
        p["conv_b"],
        p["dt_bias"].float(),
        p["A"],
        D=p["D"],
        chunk_size=chunk,
        activation="silu",
        headdim=None if d_hdim else P,
        ngroups=G,
        norm_before_gate=False,
        seq_idx=None,
    )
    assert y.shape == (2, 37, DIM)
    torch.testing.assert_close(y, by_hand(p)[0], **TOL)


def test_split_conv1d_scan_nonssm_part_initial_and_final_states():
    p = params(d_nonssm=5)
    y, final = mamba_split_conv1d_scan_combined(
        p["zxbcdt"],
        p["conv_w"],
        p["conv_b"],
        p["dt_bias"],
        p["A"],
        p["D"],
        16,
        initial_states=p["init"],
        return_final_states=True,
        headdim=P,
        ngroups=G,
    )
    y_ref, final_ref = by_hand(p, d_nonssm=5, init=p["init"])
    assert y.shape == (2, 37, 5 + DIM)
    torch.testing.assert_close(y, y_ref, **TOL)
    torch.testing.assert_close(final, final_ref, atol=1e-5, rtol=1e-5)


def test_rmsnorm_path_equals_gate_then_separate_norm():
    # mamba_ssm's fused norm (norm_before_gate=False) == megatron's gated output + ungated norm
    p = params()
    w = torch.randn(DIM)
    kw = dict(headdim=P, ngroups=G, norm_before_gate=False)
    fused = mamba_split_conv1d_scan_combined(
        p["zxbcdt"],
        p["conv_w"],
        p["conv_b"],
        p["dt_bias"],
        p["A"],
        p["D"],
        16,
        rmsnorm_weight=w,
        rmsnorm_eps=1e-5,
        **kw,
    )
    gated = mamba_split_conv1d_scan_combined(
        p["zxbcdt"], p["conv_w"], p["conv_b"], p["dt_bias"], p["A"], p["D"], 16, **kw
    )
    torch.testing.assert_close(
        fused, gated_rms_norm(gated, w, eps=1e-5, group_size=DIM // G), **TOL
    )


def test_matches_transformers_nemotron_h_mixer():
    from transformers.models.nemotron_h.configuration_nemotron_h import NemotronHConfig
    from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHMamba2Mixer

    torch.manual_seed(0)
    cfg = NemotronHConfig(
        hidden_size=16,
        mamba_num_heads=H,
        mamba_head_dim=P,
        ssm_state_size=N,
        n_groups=G,
        conv_kernel=W,
        chunk_size=8,
        num_hidden_layers=1,
    )
    mixer = NemotronHMamba2Mixer(cfg, layer_idx=0).eval()
    with torch.no_grad():
        for prm in mixer.parameters():
            prm.copy_(torch.randn_like(prm) * 0.5)
    hidden = torch.randn(2, 21, 16)
    with torch.no_grad():
        expected = mixer(hidden)
        got = mamba_split_conv1d_scan_combined(
            mixer.in_proj(hidden),
            mixer.conv1d.weight.squeeze(1),
            mixer.conv1d.bias,
            mixer.dt_bias,
            -torch.exp(mixer.A_log.float()),
            mixer.D,
            8,
            # transformers clamps dt from below at time_step_min (megatron does not)
            dt_limit=(cfg.time_step_min, float("inf")),
            activation="silu",
            rmsnorm_weight=mixer.norm.weight,
            rmsnorm_eps=mixer.norm.variance_epsilon,
            outproj_weight=mixer.out_proj.weight,
            outproj_bias=mixer.out_proj.bias,
            headdim=P,
            ngroups=G,
            norm_before_gate=False,
        )
    torch.testing.assert_close(got, expected, **TOL)


def test_chunk_scan_combined_matches_sequential_and_returns_states():
    g = torch.Generator().manual_seed(3)
    x, dt = torch.randn(2, 30, H, P, generator=g), torch.randn(2, 30, H, generator=g)
    B, C = torch.randn(2, 30, G, N, generator=g), torch.randn(2, 30, G, N, generator=g)
    A, D, z = -torch.rand(H, generator=g) - 0.1, torch.randn(H, P, generator=g), torch.randn_like(x)
    init, bias = torch.randn(2, H, P, N, generator=g), torch.randn(H, generator=g)
    y, final = mamba_chunk_scan_combined(
        x,
        dt,
        A,
        B,
        C,
        16,
        D=D,
        z=z,
        dt_bias=bias,
        initial_states=init,
        dt_softplus=True,
        return_final_states=True,
    )
    ref = ssd_sequential(
        x, dt, A, B, C, D=D, z=z, dt_bias=bias, dt_softplus=True, initial_state=init
    )
    torch.testing.assert_close(y, ref.y, **TOL)
    torch.testing.assert_close(final, ref.final_state, atol=1e-5, rtol=1e-5)
    # like mamba_ssm: final states come back in C's dtype unless state_dtype is given
    _, f16 = mamba_chunk_scan_combined(
        x, dt, A, B.bfloat16(), C.bfloat16(), 16, return_final_states=True
    )
    assert f16.dtype == torch.bfloat16
    assert mamba_chunk_scan_combined(x, dt, A, B, C, 16).shape == x.shape


def test_seq_idx_is_rejected_and_gradients_flow():
    p = params(l=12)
    seq_idx = torch.zeros(2, 12, dtype=torch.int32)
    with pytest.raises(NotImplementedError, match="seq_idx"):
        mamba_split_conv1d_scan_combined(
            p["zxbcdt"],
            p["conv_w"],
            p["conv_b"],
            p["dt_bias"],
            p["A"],
            p["D"],
            8,
            seq_idx=seq_idx,
            headdim=P,
            ngroups=G,
        )
    leaves = {k: v.requires_grad_() for k, v in p.items() if k != "init"}
    out = mamba_split_conv1d_scan_combined(
        leaves["zxbcdt"],
        leaves["conv_w"],
        leaves["conv_b"],
        leaves["dt_bias"],
        leaves["A"],
        leaves["D"],
        8,
        headdim=P,
        ngroups=G,
    )
    out.square().sum().backward()
    for name, t in leaves.items():
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0, name
