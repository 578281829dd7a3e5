"""Pure-PyTorch Mamba-2 SSD (state-space duality) scan with exact block-boundary states.

Used when the `mamba_ssm` Triton kernels cannot run (CPU). Conventions follow mamba_ssm:
x (b, l, h, p), dt (b, l, h), A (h,) negative, B/C (b, l, g, n) with head i reading group
i // (h // g), D (h,) or (h, p), z (b, l, h, p), SSM state (b, h, p, n).

Per head the recurrence is h_t = exp(dt_t A) h_{t-1} + dt_t x_t ⊗ B_t, y_t = h_t C_t + D x_t,
optionally y_t *= silu(z_t). All arithmetic runs in fp32; y comes back in x's dtype and every
state in fp32.

`ssd_scan` is the chunked (parallel) form; `ssd_step` is one decoding step; `ssd_sequential`
is the naive per-step oracle used by the tests.
"""

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["SSDOutput", "ssd_scan", "ssd_step", "ssd_sequential"]

_NO_LIMIT = (0.0, float("inf"))


@dataclass
class SSDOutput:
    """Result of a scan: y (b, l, h, p), final_state (b, h, p, n) fp32, and
    boundary_states (b, l // S + 1, h, p, n) fp32 when a state_stride S was requested."""

    y: torch.Tensor
    final_state: torch.Tensor
    boundary_states: Optional[torch.Tensor] = None


def _discretize_dt(dt, dt_bias, dt_softplus, dt_limit):
    """fp32 dt' = clamp(softplus(dt + dt_bias)) exactly as mamba_ssm's chunk-cumsum kernel."""
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        # torch's softplus passes x through above 20, like the kernel's `dt <= 20` branch
        dt = F.softplus(dt)
    return dt.clamp(min=dt_limit[0], max=dt_limit[1])


def _d_term(D, x):
    """D·x for D of shape (h,) or (h, p); x (..., h, p) fp32."""
    D = D.float()
    return x * (D[:, None] if D.dim() == 1 else D)


def _check_shapes(x, dt, A, B, C, D, z):
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    assert dt.shape == (b, l, h), f"dt {tuple(dt.shape)} != {(b, l, h)}"
    assert A.shape == (h,), f"A {tuple(A.shape)} != {(h,)}"
    assert B.shape == (b, l, g, n) and C.shape == B.shape, "B and C must be (b, l, g, n)"
    assert h % g == 0, f"nheads {h} not divisible by ngroups {g}"
    assert D is None or D.shape in ((h,), (h, p)), f"D must be (h,) or (h, p), got {tuple(D.shape)}"
    assert z is None or z.shape == x.shape, "z must have x's shape"


def _segsum(a):
    """a (..., T) -> (..., T, T) with [t, s] = sum_{s < r <= t} a_r for t >= s, -inf above.

    Summing masked copies (instead of differencing a cumsum) avoids cancellation when the
    cumulative log-decay is large."""
    T = a.shape[-1]
    rep = a[..., None, :].expand(*a.shape, T).transpose(-1, -2)  # (..., T, T): [t, s] = a_t
    strict = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=-1)
    seg = torch.cumsum(rep.masked_fill(~strict, 0.0), dim=-2)
    incl = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device))
    return seg.masked_fill(~incl, float("-inf"))


def ssd_scan(
    x, dt, A, B, C, chunk_size, *, D=None, z=None, dt_bias=None, dt_softplus=False,
    dt_limit=_NO_LIMIT, initial_state=None, state_stride=None,
) -> SSDOutput:
    """Chunked SSD scan. Differentiable; loops only over chunks (for state passing).

    With `state_stride=S` (S | l, independent of chunk_size) also returns the exact state before
    every position k·S, k = 0..l/S (index 0 = initial state, last = final state)."""
    _check_shapes(x, dt, A, B, C, D, z)
    bsz, l, h, p = x.shape
    g, n = B.shape[-2:]
    r = h // g  # heads per group
    Q = chunk_size
    if state_stride is not None:
        assert l % state_stride == 0, f"state_stride {state_stride} must divide seqlen {l}"

    dt = _discretize_dt(dt, dt_bias, dt_softplus, dt_limit)
    xf, Bf, Cf = x.float(), B.float(), C.float()
    # pad to whole chunks after discretising: dt'=0 means decay 1 and no input, so the state
    # and the outputs at real positions are unchanged
    nc = max(1, math.ceil(l / Q))
    pad = nc * Q - l
    if pad:
        xf = F.pad(xf, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        Bf = F.pad(Bf, (0, 0, 0, 0, 0, pad))
        Cf = F.pad(Cf, (0, 0, 0, 0, 0, pad))

    # split heads into (group, head-in-group) so B/C are never copied per head
    xc = xf.reshape(bsz, nc, Q, g, r, p)                      # (b, c, Q, g, r, p)
    dtc = dt.reshape(bsz, nc, Q, g, r).permute(0, 1, 3, 4, 2)  # (b, c, g, r, Q)
    Bc = Bf.reshape(bsz, nc, Q, g, n)                         # (b, c, Q, g, n)
    Cc = Cf.reshape(bsz, nc, Q, g, n)                         # (b, c, Q, g, n)
    a = dtc * A.float().reshape(g, r)[:, :, None]             # log decays (b, c, g, r, Q)
    acs = torch.cumsum(a, dim=-1)                             # inclusive cumsum (b, c, g, r, Q)
    seg = _segsum(a)                                          # (b, c, g, r, Q, Q)
    xdt = xc * dtc.permute(0, 1, 4, 2, 3)[..., None]          # dt_s x_s (b, c, Q, g, r, p)

    # 1) intra-chunk (quadratic) output: y_t = sum_{s<=t} exp(seg[t,s]) (C_t.B_s) dt_s x_s
    CB = torch.einsum("bctgn,bcsgn->bcgts", Cc, Bc)           # (b, c, g, Q, Q)
    Lmat = torch.exp(seg) * CB[:, :, :, None]                 # (b, c, g, r, Q, Q)
    y = torch.einsum("bcgrts,bcsgrp->bctgrp", Lmat, xdt)      # (b, c, Q, g, r, p)

    # 2) state contributed by each chunk alone, decayed to the chunk end
    decay_to_end = torch.exp(seg[..., -1, :])                 # (b, c, g, r, Q)
    chunk_states = torch.einsum("bcgrs,bcsgrp,bcsgn->bcgrpn", decay_to_end, xdt, Bc)

    # 3) pass states across chunks: H_{c+1} = exp(sum a in c) H_c + chunk_state_c
    if initial_state is None:
        H = xf.new_zeros(bsz, g, r, p, n)
    else:
        assert initial_state.shape == (bsz, h, p, n), "initial_state must be (b, h, p, n)"
        H = initial_state.float().reshape(bsz, g, r, p, n)
    chunk_decay = torch.exp(acs[..., -1])                     # (b, c, g, r)
    starts = []
    for c in range(nc):
        starts.append(H)
        H = chunk_decay[:, c, :, :, None, None] * H + chunk_states[:, c]
    H_start = torch.stack(starts, dim=1)                      # state entering each chunk (b, c, g, r, p, n)
    final_state = H.reshape(bsz, h, p, n)

    # 4) inter-chunk output: y_t += exp(acs_t) C_t . H_c
    y = y + torch.einsum("bcgrt,bctgn,bcgrpn->bctgrp", torch.exp(acs), Cc, H_start)
    y = y.reshape(bsz, nc * Q, h, p)[:, :l]
    if D is not None:
        y = y + _d_term(D, x.float())
    if z is not None:
        y = y * F.silu(z.float())

    boundary = None
    if state_stride is not None:
        boundary = _boundary_states(state_stride, Q, nc, a, seg, acs, xdt, Bc, H_start, final_state)
        # the last boundary is position l: use final_state itself so the two agree bitwise
        boundary = torch.cat([boundary[:, : l // state_stride], final_state[:, None]], dim=1)
    return SSDOutput(y=y.to(x.dtype), final_state=final_state, boundary_states=boundary)


def _boundary_states(S, Q, nc, a, seg, acs, xdt, Bc, H_start, final_state):
    """States before every position k·S, from the chunk-start states.

    With G = gcd(S, Q) every multiple of S is a multiple of G, and the multiples of G sit at the
    same offsets j = 0, G, ..., Q-G in every chunk. The state before offset j of chunk c is
        exp(sum_{r<j} a_r) H_c + sum_{s<j} exp(sum_{s<r<j} a_r) dt_s x_s ⊗ B_s,
    i.e. row j-1 of the chunk's segment-sum matrix. One einsum gives all of them; we then keep
    every (S/G)-th and append the final state (position nc·Q)."""
    bsz, _, g, r, p, n = H_start.shape
    G = math.gcd(S, Q)
    offs = torch.arange(0, Q, G, device=a.device)             # (J,)
    # exclusive rows: row j holds seg[j-1, :] (all -inf for j = 0: nothing consumed yet)
    seg_ex = torch.cat([torch.full_like(seg[..., :1, :], float("-inf")), seg[..., :-1, :]], dim=-2)
    W = torch.exp(seg_ex[..., offs, :])                       # (b, c, g, r, J, Q)
    acs_ex = F.pad(acs[..., :-1], (1, 0))                     # sum_{r<j} a_r (b, c, g, r, Q)
    Hdecay = torch.exp(acs_ex[..., offs])                     # (b, c, g, r, J)
    inner = torch.einsum("bcgrjs,bcsgrp,bcsgn->bcjgrpn", W, xdt, Bc)
    states = inner + Hdecay.permute(0, 1, 4, 2, 3)[..., None, None] * H_start[:, :, None]
    states = states.reshape(bsz, nc * len(offs), g * r, p, n)  # positions 0, G, ..., nc·Q - G
    states = torch.cat([states, final_state[:, None]], dim=1)  # + position nc·Q
    return states[:, :: S // G]


def ssd_step(
    state, x_t, dt_t, A, B_t, C_t, *, D=None, z_t=None, dt_bias=None, dt_softplus=False,
    dt_limit=_NO_LIMIT,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One recurrence step for decoding. state (b, h, p, n); x_t (b, h, p); dt_t (b, h);
    B_t/C_t (b, g, n). Returns (y_t (b, h, p) in x_t's dtype, new_state fp32)."""
    h = x_t.shape[1]
    r = h // B_t.shape[1]
    dt = _discretize_dt(dt_t, dt_bias, dt_softplus, dt_limit)           # (b, h)
    Bh = B_t.float().repeat_interleave(r, dim=1)                        # (b, h, n)
    Ch = C_t.float().repeat_interleave(r, dim=1)                        # (b, h, n)
    decay = torch.exp(dt * A.float())[..., None, None]                  # (b, h, 1, 1)
    xf = x_t.float()
    new_state = decay * state.float() + (dt[..., None] * xf)[..., None] * Bh[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", new_state, Ch)
    if D is not None:
        y = y + _d_term(D, xf)
    if z_t is not None:
        y = y * F.silu(z_t.float())
    return y.to(x_t.dtype), new_state


def ssd_sequential(
    x, dt, A, B, C, chunk_size=None, *, D=None, z=None, dt_bias=None, dt_softplus=False,
    dt_limit=_NO_LIMIT, initial_state=None, state_stride=None,
) -> SSDOutput:
    """Naive per-time-step recurrence (the test oracle). chunk_size is accepted and ignored."""
    _check_shapes(x, dt, A, B, C, D, z)
    bsz, l, h, p = x.shape
    g, n = B.shape[-2:]
    dtf = dt.float() + (dt_bias.float() if dt_bias is not None else 0.0)
    if dt_softplus:
        dtf = F.softplus(dtf)
    dtf = dtf.clamp(min=dt_limit[0], max=dt_limit[1])
    Bh = B.float().repeat_interleave(h // g, dim=2)  # (b, l, h, n)
    Ch = C.float().repeat_interleave(h // g, dim=2)  # (b, l, h, n)
    state = x.new_zeros(bsz, h, p, n, dtype=torch.float32)
    if initial_state is not None:
        state = initial_state.float()
    ys, boundary = [], []
    for t in range(l):
        if state_stride is not None and t % state_stride == 0:
            boundary.append(state)
        decay = torch.exp(dtf[:, t] * A.float())  # (b, h)
        state = decay[..., None, None] * state + torch.einsum(
            "bh,bhp,bhn->bhpn", dtf[:, t], x[:, t].float(), Bh[:, t])
        y_t = torch.einsum("bhpn,bhn->bhp", state, Ch[:, t])
        if D is not None:
            Df = D.float()
            y_t = y_t + x[:, t].float() * (Df[:, None] if Df.dim() == 1 else Df)
        if z is not None:
            y_t = y_t * F.silu(z[:, t].float())
        ys.append(y_t)
    if state_stride is not None:
        assert l % state_stride == 0, f"state_stride {state_stride} must divide seqlen {l}"
        boundary.append(state)
    y = torch.stack(ys, dim=1).to(x.dtype) if ys else x.clone()
    return SSDOutput(y=y, final_state=state,
                     boundary_states=torch.stack(boundary, dim=1) if boundary else None)
