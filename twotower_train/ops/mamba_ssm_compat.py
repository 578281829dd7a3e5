"""Pure-PyTorch stand-ins for mamba_ssm's fused SSD entry points (same signatures/semantics).

`mamba_chunk_scan_combined` and `mamba_split_conv1d_scan_combined` mirror
mamba_ssm/ops/triton/ssd_combined.py so megatron's `MambaMixer` can run on a CPU. Built on
`ssd_scan`, `causal_conv1d` and `gated_rms_norm`; autograd supplies the backward pass.
Packed sequences (`seq_idx`) and varlen states are not supported.
"""

import torch
import torch.nn.functional as F
from einops import rearrange

from twotower_train.ops.conv import causal_conv1d
from twotower_train.ops.gated_norm import gated_rms_norm
from twotower_train.ops.ssd import NO_DT_LIMIT, ssd_scan

__all__ = ["mamba_chunk_scan_combined", "mamba_split_conv1d_scan_combined"]


def _reject_seq_idx(seq_idx):
    if seq_idx is not None:
        raise NotImplementedError(
            "seq_idx (packed sequences) is not supported by the pure-PyTorch Mamba-2 path; "
            "run unpacked batches on CPU or use the mamba_ssm kernels on GPU"
        )


def mamba_chunk_scan_combined(
    x,
    dt,
    A,
    B,
    C,
    chunk_size,
    D=None,
    z=None,
    dt_bias=None,
    initial_states=None,
    seq_idx=None,
    cu_seqlens=None,
    dt_softplus=False,
    dt_limit=NO_DT_LIMIT,
    return_final_states=False,
    return_varlen_states=False,
    state_dtype=None,
):
    """x (b, l, h, p), dt (b, l, h), A (h,), B/C (b, l, g, n) -> out (b, l, h, p)
    [, final_states (b, h, p, n) in state_dtype or C's dtype, as mamba_ssm returns them]."""
    _reject_seq_idx(seq_idx)
    if return_varlen_states:
        raise NotImplementedError(
            "return_varlen_states/cu_seqlens are not supported on the pure-PyTorch Mamba-2 path"
        )
    res = ssd_scan(
        x,
        dt,
        A,
        B,
        C,
        chunk_size,
        D=D,
        z=z,
        dt_bias=dt_bias,
        dt_softplus=dt_softplus,
        dt_limit=dt_limit,
        initial_state=initial_states,
    )
    if not return_final_states:
        return res.y
    return res.y, res.final_state.to(state_dtype if state_dtype is not None else C.dtype)


def mamba_split_conv1d_scan_combined(
    zxbcdt,
    conv1d_weight,
    conv1d_bias,
    dt_bias,
    A,
    D,
    chunk_size,
    initial_states=None,
    seq_idx=None,
    dt_limit=NO_DT_LIMIT,
    return_final_states=False,
    activation="silu",
    rmsnorm_weight=None,
    rmsnorm_eps=1e-6,
    outproj_weight=None,
    outproj_bias=None,
    headdim=None,
    ngroups=1,
    norm_before_gate=True,
    state_dtype=None,
):
    """in_proj output -> causal conv -> SSD (dt softplus) -> gate/norm -> optional out_proj.

    zxbcdt (b, l, 2·d_nonssm + 2·dim + 2·g·n + h) split as [zx0, z, xBC, dt]; the zx0 part
    (d_nonssm > 0) goes through SwiGLU and is prepended to the output. Without rmsnorm_weight
    the result is ssd(x)·silu(z) (b, l, dim) -- what megatron's MambaMixer expects before its
    own norm."""
    _reject_seq_idx(seq_idx)
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    if D.dim() == 1:
        assert headdim is not None, "headdim is required when D is (nheads,)"
        nheads = D.shape[0]
    else:
        nheads, headdim = D.shape
    bsz, seqlen, _ = zxbcdt.shape
    dim = nheads * headdim
    assert nheads % ngroups == 0
    dstate = (conv1d_weight.shape[0] - dim) // ngroups // 2
    d_nonssm = (zxbcdt.shape[-1] - 2 * dim - 2 * ngroups * dstate - nheads) // 2
    assert d_nonssm >= 0
    assert zxbcdt.shape[-1] == 2 * d_nonssm + 2 * dim + 2 * ngroups * dstate + nheads, (
        "zxbcdt last dim does not match [zx0, z, xBC, dt] for the given D/headdim/ngroups/conv"
    )
    assert dt_bias.shape == (nheads,) and A.shape == (nheads,)

    zx0, z, xBC, dt = torch.split(
        zxbcdt, [2 * d_nonssm, dim, dim + 2 * ngroups * dstate, nheads], dim=-1
    )
    xBC, _, _ = causal_conv1d(
        xBC,
        conv1d_weight,
        conv1d_bias,
        activation="silu" if activation in ("silu", "swish") else None,
    )
    x, B, C = torch.split(xBC, [dim, ngroups * dstate, ngroups * dstate], dim=-1)
    x = rearrange(x, "b l (h p) -> b l h p", h=nheads)
    B = rearrange(B, "b l (g n) -> b l g n", g=ngroups)
    C = rearrange(C, "b l (g n) -> b l g n", g=ngroups)
    z = rearrange(z, "b l (h p) -> b l h p", h=nheads)

    # the gate goes inside the scan only when no norm follows (the norm applies it otherwise)
    res = ssd_scan(
        x,
        dt,
        A,
        B,
        C,
        chunk_size,
        D=D,
        z=z if rmsnorm_weight is None else None,
        dt_bias=dt_bias,
        dt_softplus=True,
        dt_limit=dt_limit,
        initial_state=initial_states,
    )
    out = rearrange(res.y, "b l h p -> b l (h p)")
    if rmsnorm_weight is not None:
        out = gated_rms_norm(
            out,
            rmsnorm_weight,
            z=rearrange(z, "b l h p -> b l (h p)"),
            eps=rmsnorm_eps,
            group_size=dim // ngroups,
            norm_before_gate=norm_before_gate,
        ).to(out.dtype)
    if d_nonssm > 0:
        gate, up = zx0.chunk(2, dim=-1)  # SwiGLU: silu(first half) * second half
        out = torch.cat([(F.silu(gate.float()) * up.float()).to(out.dtype), out], dim=-1)
    if outproj_weight is not None:
        out = F.linear(out, outproj_weight, outproj_bias)
    else:
        assert outproj_bias is None, "outproj_bias given without outproj_weight"
    if not return_final_states:
        return out
    return out, res.final_state.to(state_dtype if state_dtype is not None else C.dtype)
