"""Pure-PyTorch Mamba-2 SSD (state-space duality) scan with exact block-boundary states.

Used when the `mamba_ssm` Triton kernels cannot run (CPU). Conventions follow mamba_ssm:
x (b, l, h, p), dt (b, l, h), A (h,) negative, B/C (b, l, g, n) with head i reading group
i // (h // g), D (h,) or (h, p), z (b, l, h, p), SSM state (b, h, p, n).

Per head the recurrence is h_t = exp(dt_t A) h_{t-1} + dt_t x_t ⊗ B_t, y_t = h_t C_t + D x_t,
optionally y_t *= silu(z_t). All arithmetic runs in fp32 (fp64 if x is fp64); y comes back in
x's dtype and every state in that compute dtype.

`ssd_scan` is the chunked (parallel) form; `ssd_step` is one decoding step; `ssd_sequential`
is the naive per-step oracle used by the tests.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["SSDOutput", "ssd_scan", "ssd_step", "ssd_sequential"]

NO_DT_LIMIT = (0.0, float("inf"))
"""``dt_limit`` that clamps nothing (mamba_ssm's default)."""


@dataclass
class SSDOutput:
    """Result of a scan: y (b, l, h, p) in x's dtype, final_state (b, h, p, n) and
    boundary_states (b, l // S + 1, h, p, n) in fp32 (fp64 for fp64 inputs); boundary_states is
    None unless a state_stride S was requested."""

    y: torch.Tensor
    final_state: torch.Tensor
    boundary_states: torch.Tensor | None = None


def _compute_dtype(x):
    """fp32, or fp64 when the inputs are fp64 (lets gradcheck run in double)."""
    return torch.promote_types(x.dtype, torch.float32)


def _discretize_dt(dt, dt_bias, dt_softplus, dt_limit, cd):
    """dt' = clamp(softplus(dt + dt_bias)) in dtype cd, as mamba_ssm's chunk-cumsum kernel."""
    dt = dt.to(cd)
    if dt_bias is not None:
        dt = dt + dt_bias.to(cd)
    if dt_softplus:
        # torch's softplus passes x through above 20, like the kernel's `dt <= 20` branch
        dt = F.softplus(dt)
    return dt.clamp(min=dt_limit[0], max=dt_limit[1])


def _d_term(D, x):
    """D·x for D of shape (h,) or (h, p); x (..., h, p) already in the compute dtype."""
    D = D.to(x.dtype)
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


def _segment_states(xdt, B, a):
    """State each segment builds from zero, decayed to its end.

    xdt (..., T, g, r, p) = dt·x, B (..., T, g, n), a (..., g, r, T) log decays
    -> (..., g, r, p, n) = sum_s exp(sum_{r>s} a_r) dt_s x_s ⊗ B_s."""
    # suffix sums without subtraction: flip, cumsum, flip, shifted to exclude a_s itself
    suffix = F.pad(torch.flip(torch.cumsum(torch.flip(a[..., 1:], [-1]), -1), [-1]), (0, 1))
    wx = xdt * torch.exp(suffix).movedim(-1, -3)[..., None]  # (..., T, g, r, p)
    # two-operand einsums only: torch has no opt_einsum here, so 3-way ones materialise
    # huge outer products
    return torch.einsum("...tgrp,...tgn->...grpn", wx, B)


def _prefix_states(seg_states, seg_log_decay, init):
    """States before each of K consecutive segments, plus the state after the last one.

    seg_states (N, K, g, r, p, n), seg_log_decay (N, K, g, r), init (N, g, r, p, n)
    -> (N, K+1, g, r, p, n). out[k] = exp(L_k) out[k-1] + seg_states[k-1], solved for all k at
    once with a segment sum over the K+1 entries [init, seg_states...]."""
    src = torch.cat([init[:, None], seg_states], dim=1)  # (N, K+1, g, r, p, n)
    L = F.pad(seg_log_decay, (0, 0, 0, 0, 1, 0))  # L_0 unused (N, K+1, g, r)
    W = torch.exp(_segsum(L.permute(0, 2, 3, 1)))  # [k, m] (N, g, r, K+1, K+1)
    return torch.einsum("ngrkm,nmgrpq->nkgrpq", W, src)


def ssd_scan(
    x,
    dt,
    A,
    B,
    C,
    chunk_size,
    *,
    D=None,
    z=None,
    dt_bias=None,
    dt_softplus=False,
    dt_limit=NO_DT_LIMIT,
    initial_state=None,
    state_stride=None,
) -> SSDOutput:
    """Chunked SSD scan: quadratic form inside chunks, state passing between them (a segment
    sum over chunk states, no Python loop over time or chunks). Differentiable.

    With `state_stride=S` (S | l, independent of chunk_size) also returns the exact state before
    every position k·S, k = 0..l/S (index 0 = initial state, last = final state)."""
    _check_shapes(x, dt, A, B, C, D, z)
    bsz, l, h, p = x.shape
    g, n = B.shape[-2:]
    r = h // g  # heads per group
    Q = chunk_size
    if state_stride is not None:
        assert l % state_stride == 0, f"state_stride {state_stride} must divide seqlen {l}"
    if initial_state is not None:
        assert initial_state.shape == (bsz, h, p, n), "initial_state must be (b, h, p, n)"

    cd = _compute_dtype(x)
    dt = _discretize_dt(dt, dt_bias, dt_softplus, dt_limit, cd)
    xf, Bf, Cf = x.to(cd), B.to(cd), C.to(cd)
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
    xc = xf.reshape(bsz, nc, Q, g, r, p)  # (b, c, Q, g, r, p)
    dtc = dt.reshape(bsz, nc, Q, g, r)  # (b, c, Q, g, r)
    Bc = Bf.reshape(bsz, nc, Q, g, n)  # (b, c, Q, g, n)
    Cc = Cf.reshape(bsz, nc, Q, g, n)  # (b, c, Q, g, n)
    a = dtc.permute(0, 1, 3, 4, 2) * A.to(cd).reshape(g, r, 1)  # log decays (b, c, g, r, Q)
    xdt = xc * dtc[..., None]  # dt_s x_s (b, c, Q, g, r, p)

    # 1) intra-chunk (quadratic) output: y_t = sum_{s<=t} exp(seg[t,s]) (C_t.B_s) dt_s x_s
    CB = torch.einsum("bctgn,bcsgn->bcgts", Cc, Bc)  # (b, c, g, Q, Q)
    Lmat = torch.exp(_segsum(a)) * CB[:, :, :, None]  # (b, c, g, r, Q, Q)
    y = torch.einsum("bcgrts,bcsgrp->bctgrp", Lmat, xdt)  # (b, c, Q, g, r, p)

    # 2) chunk states, then 3) the state entering every chunk (index nc = final state)
    chunk_states = _segment_states(xdt, Bc, a)  # (b, c, g, r, p, n)
    init = (
        xf.new_zeros(bsz, g, r, p, n)
        if initial_state is None
        else initial_state.to(cd).reshape(bsz, g, r, p, n)
    )
    H = _prefix_states(chunk_states, a.sum(-1), init)  # (b, c+1, g, r, p, n)
    H_start, final_state = H[:, :-1], H[:, -1].reshape(bsz, h, p, n)

    # 4) inter-chunk output: y_t += exp(sum_{r<=t} a_r) C_t . H_c
    CH = torch.einsum("bctgn,bcgrpn->bctgrp", Cc, H_start)  # (b, c, Q, g, r, p)
    y = y + CH * torch.exp(torch.cumsum(a, -1)).permute(0, 1, 4, 2, 3)[..., None]
    y = y.reshape(bsz, nc * Q, h, p)[:, :l]
    if D is not None:
        y = y + _d_term(D, x.to(cd))
    if z is not None:
        y = y * F.silu(z.to(cd))

    boundary = None
    if state_stride is not None:
        boundary = _boundary_states(state_stride, Q, a, xdt, Bc, H_start)
        # the last boundary is position l: use final_state itself so the two agree bitwise
        boundary = torch.cat([boundary[:, : l // state_stride], final_state[:, None]], dim=1)
    return SSDOutput(y=y.to(x.dtype), final_state=final_state, boundary_states=boundary)


def _boundary_states(S, Q, a, xdt, Bc, H_start):
    """States before positions 0, S, 2S, ... (up to the last chunk), from chunk-start states.

    With G = gcd(S, Q) every multiple of S is a multiple of G, and each chunk splits into
    J = Q/G sub-chunks of G positions. Each sub-chunk's own state (_segment_states) and a
    per-chunk prefix pass seeded with the chunk-start state H_c (_prefix_states over J) give the
    exact state before every sub-chunk; we keep every (S/G)-th. Cost is O(l/G) states, not a
    rescan per boundary."""
    bsz, nc, g, r, p, n = H_start.shape
    G = math.gcd(S, Q)
    J = Q // G
    a_sub = a.reshape(bsz, nc, g, r, J, G).permute(0, 1, 4, 2, 3, 5)  # (b, c, J, g, r, G)
    xdt_sub = xdt.reshape(bsz, nc, J, G, g, r, p)  # (b, c, J, G, g, r, p)
    B_sub = Bc.reshape(bsz, nc, J, G, g, n)  # (b, c, J, G, g, n)
    sub_states = _segment_states(xdt_sub, B_sub, a_sub)  # (b, c, J, g, r, p, n)
    states = _prefix_states(
        sub_states.flatten(0, 1), a_sub.sum(-1).flatten(0, 1), H_start.flatten(0, 1)
    )[:, :J]  # (b·c, J, g, r, p, n)
    states = states.reshape(bsz, nc * J, g * r, p, n)  # positions 0, G, .., ncQ-G
    return states[:, :: S // G]


def ssd_step(
    state,
    x_t,
    dt_t,
    A,
    B_t,
    C_t,
    *,
    D=None,
    z_t=None,
    dt_bias=None,
    dt_softplus=False,
    dt_limit=NO_DT_LIMIT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrence step for decoding. state (b, h, p, n); x_t (b, h, p); dt_t (b, h);
    B_t/C_t (b, g, n). Returns (y_t (b, h, p) in x_t's dtype, new_state (b, h, p, n) fp32)."""
    h = x_t.shape[1]
    r = h // B_t.shape[1]
    cd = _compute_dtype(x_t)
    dt = _discretize_dt(dt_t, dt_bias, dt_softplus, dt_limit, cd)  # (b, h)
    Bh = B_t.to(cd).repeat_interleave(r, dim=1)  # (b, h, n)
    Ch = C_t.to(cd).repeat_interleave(r, dim=1)  # (b, h, n)
    decay = torch.exp(dt * A.to(cd))[..., None, None]  # (b, h, 1, 1)
    xf = x_t.to(cd)
    new_state = decay * state.to(cd) + (dt[..., None] * xf)[..., None] * Bh[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", new_state, Ch)
    if D is not None:
        y = y + _d_term(D, xf)
    if z_t is not None:
        y = y * F.silu(z_t.to(cd))
    return y.to(x_t.dtype), new_state


def ssd_sequential(
    x,
    dt,
    A,
    B,
    C,
    chunk_size=None,
    *,
    D=None,
    z=None,
    dt_bias=None,
    dt_softplus=False,
    dt_limit=NO_DT_LIMIT,
    initial_state=None,
    state_stride=None,
) -> SSDOutput:
    """Naive per-time-step recurrence (the test oracle). chunk_size is accepted and ignored."""
    _check_shapes(x, dt, A, B, C, D, z)
    bsz, l, h, p = x.shape
    g, n = B.shape[-2:]
    cd = _compute_dtype(x)
    dtf = dt.to(cd) + (dt_bias.to(cd) if dt_bias is not None else 0.0)
    if dt_softplus:
        dtf = F.softplus(dtf)
    dtf = dtf.clamp(min=dt_limit[0], max=dt_limit[1])
    Bh = B.to(cd).repeat_interleave(h // g, dim=2)  # (b, l, h, n)
    Ch = C.to(cd).repeat_interleave(h // g, dim=2)  # (b, l, h, n)
    if state_stride is not None:
        assert l % state_stride == 0, f"state_stride {state_stride} must divide seqlen {l}"
    state = x.new_zeros(bsz, h, p, n, dtype=cd)
    if initial_state is not None:
        state = initial_state.to(cd)
    ys, boundary = [], []
    for t in range(l):
        if state_stride is not None and t % state_stride == 0:
            boundary.append(state)
        decay = torch.exp(dtf[:, t] * A.to(cd))  # (b, h)
        state = decay[..., None, None] * state + torch.einsum(
            "bh,bhp,bhn->bhpn", dtf[:, t], x[:, t].to(cd), Bh[:, t]
        )
        y_t = torch.einsum("bhpn,bhn->bhp", state, Ch[:, t])
        if D is not None:
            Df = D.to(cd)
            y_t = y_t + x[:, t].to(cd) * (Df[:, None] if Df.dim() == 1 else Df)
        if z is not None:
            y_t = y_t * F.silu(z[:, t].to(cd))
        ys.append(y_t)
    if state_stride is not None:
        boundary.append(state)
    y = torch.stack(ys, dim=1).to(x.dtype) if ys else x.clone()
    return SSDOutput(
        y=y, final_state=state, boundary_states=torch.stack(boundary, dim=1) if boundary else None
    )
