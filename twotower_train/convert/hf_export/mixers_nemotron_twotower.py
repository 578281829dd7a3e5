"""Mixer forwards with explicit state in / out, on transformers' ``nemotron_h`` modules and
their parameters (part of the Nemotron-TwoTower export; see ``modeling_nemotron_twotower.py``).

The stock ``NemotronHMamba2Mixer`` / ``NemotronHAttention`` forwards keep their state inside a
transformers cache; the two towers need it in the open: the context tower hands per-layer K/V
and Mamba conv / SSM states to the denoiser, which seeds its scans and attends to them. These
functions reuse the modules' projections and parameters, and transformers' ``causal_conv1d_fn``
/ ``mamba2_chunk_scan`` (the causal-conv1d / mamba-ssm kernels where installed, PyTorch
otherwise); a single new position (an AR or mock-AR step) takes the recurrence directly.

Layouts: hidden states (b, s, d); attention tensors (b, heads, s, head_dim); Mamba conv state
(b, conv_kernel − 1, conv_dim), SSM state (b, mamba_heads, mamba_head_dim, ssm_state), fp32.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.models.nemotron_h.modeling_nemotron_h import (
    causal_conv1d_fn,
    mamba2_chunk_scan,
)

from .cache import ContextCache, MambaStates


def mamba_mixer(
    mixer: nn.Module,
    hidden: torch.Tensor,
    initial: MambaStates | None,
    valid: torch.Tensor | None = None,
    position_states: bool = False,
) -> tuple[torch.Tensor, MambaStates, MambaStates | None]:
    """A ``NemotronHMamba2Mixer`` over ``hidden`` (b, s, d) from ``initial`` states (zeros if
    None) → (output (b, s, d), states after the last position, states after every position or
    None).

    ``valid`` (b, s) is False at left padding, which then leaves every state unchanged (its conv
    input and step size are zeroed). The step size is not clamped (Megatron trains without a
    ``dt`` limit).
    """
    b, s, _ = hidden.shape
    heads, head_dim = mixer.num_heads, mixer.head_dim
    groups, d_state, d_inner = mixer.n_groups, mixer.ssm_state_size, mixer.intermediate_size
    width = mixer.conv_kernel_size
    gate, xbc, dt = mixer.in_proj(hidden).split([d_inner, mixer.conv_dim, heads], dim=-1)
    dt = F.softplus(dt.float() + mixer.dt_bias.float())  # (b, s, heads)
    if valid is not None:
        keep = valid.unsqueeze(-1)  # (b, s, 1)
        xbc, dt = xbc * keep, dt * keep
    if initial is None:
        history = xbc.new_zeros(b, width - 1, mixer.conv_dim)
    else:
        history = initial.conv.to(xbc.dtype)
    window = torch.cat([history, xbc], dim=1)  # (b, w − 1 + s, conv_dim): conv inputs, oldest first
    if s == 1 and valid is None and not position_states:
        out, ssm = _mamba_step(mixer, hidden, gate, window, dt, initial)
        return out, MambaStates(conv=window[:, 1:], ssm=ssm), None
    one_chunk = s <= mixer.chunk_size  # a decoding call: direct forms, not the kernels' fallbacks
    if one_chunk:  # each output is one dot product over its w inputs (oneDNN's conv costs more)
        conv = _conv_windows(mixer, window)  # (b, s, conv_dim)
    else:  # the conv runs over history ⊕ new inputs; the first w − 1 (zero-padded) outputs drop
        conv = causal_conv1d_fn(
            window.transpose(1, 2),
            mixer.conv1d.weight.squeeze(1),
            mixer.conv1d.bias,
            activation=mixer.activation,
        )[:, :, width - 1 :].transpose(1, 2)  # (b, s, conv_dim)
    x, B, C = conv.split([d_inner, groups * d_state, groups * d_state], dim=-1)
    x = x.reshape(b, s, heads, head_dim)
    B, C = B.reshape(b, s, groups, d_state), C.reshape(b, s, groups, d_state)
    A = -torch.exp(mixer.A_log.float())  # (heads,)
    h0 = None if initial is None else initial.ssm
    each = None  # SSM states after every position, (b, s, heads, head_dim, d_state)
    if one_chunk:  # one chunk: its quadratic form directly, not the chunk machinery
        y, states = ssd_one_chunk(x, dt, A, B, C, mixer.D, h0, position_states)
        each, ssm = (states, states[:, -1]) if position_states else (None, states)
    else:
        y, ssm = mamba2_chunk_scan(
            x,
            dt,
            A,
            B,
            C,
            chunk_size=mixer.chunk_size,
            D=mixer.D,
            initial_states=h0,
            dt_softplus=False,
            return_final_states=True,
        )  # y (b, s, heads, head_dim), ssm (b, heads, head_dim, d_state)
    y = mixer.norm(y.reshape(b, s, d_inner), gate)  # gated RMSNorm: norm(y · silu(gate))
    out = mixer.out_proj(y.to(hidden.dtype))
    final = MambaStates(conv=window[:, s:], ssm=ssm.float())
    per_position = None
    if position_states:
        # Conv state after new position k = the w − 1 inputs ending at k: window[k + 1 : k + w].
        index = (
            torch.arange(s, device=hidden.device)[:, None]
            + 1
            + torch.arange(width - 1, device=hidden.device)
        )  # (s, w − 1)
        per_position = MambaStates(
            conv=window[:, index],  # (b, s, w − 1, conv_dim)
            ssm=each if each is not None else ssm_after_each_position(x, dt, A, B, h0),
        )
    return out, final, per_position


def _mamba_step(mixer, hidden, gate, window, dt, initial):
    """One new position (s = 1) by the recurrence itself — the conv as one dot product over the
    window, then h = exp(dt·A)·h + dt·x ⊗ B, y = C·h + D·x — instead of the chunked conv and
    scan (dozens of ops each). → (output (b, 1, d), SSM state (b, heads, head_dim, d_state))."""
    b = hidden.shape[0]
    groups, d_state, d_inner = mixer.n_groups, mixer.ssm_state_size, mixer.intermediate_size
    conv = _conv_windows(mixer, window)[:, 0]  # (b, conv_dim)
    x, B, C = conv.float().split([d_inner, groups * d_state, groups * d_state], dim=-1)
    # Heads in groups: (b, groups, heads per group, …) shares B / C without copying them.
    x = x.view(b, groups, -1, mixer.head_dim)  # (b, g, h/g, head_dim)
    B, C = B.view(b, groups, 1, 1, d_state), C.view(b, groups, 1, d_state)
    dt = dt.view(b, groups, -1, 1)  # (b, g, h/g, 1)
    A = -torch.exp(mixer.A_log.float()).view(groups, -1, 1)  # (g, h/g, 1)
    state = (dt * x).unsqueeze(-1) * B  # (b, g, h/g, head_dim, d_state): dt·x ⊗ B
    if initial is not None:
        h0 = initial.ssm.float().reshape(state.shape)  # a rolled-back state may be a strided view
        state = state + torch.exp(dt * A).unsqueeze(-1) * h0
    y = (state @ C.unsqueeze(-1)).squeeze(-1) + mixer.D.view(groups, -1, 1) * x  # (b, g, h/g, hd)
    y = mixer.norm(y.reshape(b, 1, d_inner), gate)  # gated RMSNorm: norm(y · silu(gate))
    return mixer.out_proj(y.to(hidden.dtype)), state.view(
        b, mixer.num_heads, mixer.head_dim, d_state
    )


def _conv_windows(mixer, window):
    """The causal depthwise conv + activation at the s newest of the inputs ``window``
    (b, w − 1 + s, conv_dim): output k is the dot product of the mixer's kernel with
    window[k : k + w] → (b, s, conv_dim), as ``causal_conv1d_fn`` computes it (in the weight's
    dtype, the result in the window's)."""
    weight = mixer.conv1d.weight.squeeze(1)  # (conv_dim, w)
    windows = window.to(weight.dtype).unfold(1, weight.shape[1], 1)  # (b, s, conv_dim, w) view
    conv = torch.einsum("bscw,cw->bsc", windows, weight)
    if mixer.conv1d.bias is not None:
        conv = conv + mixer.conv1d.bias
    return ACT2FN[mixer.activation](conv).to(window.dtype)


def ssd_one_chunk(x, dt, A, B, C, D, h0, every_position: bool):
    """The SSD scan of s ≤ chunk_size positions in one chunk's quadratic form — what
    ``mamba2_chunk_scan`` computes for a single chunk, without its padding and inter-chunk
    bookkeeping. With cum_i = Σ_{k ≤ i} dt_k·A (per head) and decay(j → i) = exp(cum_i − cum_j):
    h_i = exp(cum_i)·h0 + Σ_{j ≤ i} decay(j → i)·dt_j·x_j ⊗ B_j and
    y_i = C_i·h_i + D·x_i = exp(cum_i)·C_i·h0 + Σ_{j ≤ i} decay(j → i)·(C_i·B_j)·dt_j·x_j + D·x_i.

    x (b, s, heads, hd), dt (b, s, heads) fp32, A (heads,), B / C (b, s, groups, n), h0
    (b, heads, hd, n) or None → y (b, s, heads, hd) and the states, fp32: h_i for every position
    (b, s, heads, hd, n) with ``every_position``, else the last one (b, heads, hd, n). Heads are
    viewed as (groups, heads per group) so that B / C are shared, not copied."""
    b, s, heads, hd = x.shape
    g, n = B.shape[2], B.shape[3]
    x = x.float().view(b, s, g, heads // g, hd)
    B, C = B.float(), C.float()
    cum = torch.cumsum(dt * A, dim=1).view(b, s, g, heads // g)  # (b, s, g, r)
    causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()[:, :, None, None]
    gap = (cum[:, :, None] - cum[:, None]).masked_fill(~causal, float("-inf"))
    decay = gap.exp()  # (b, i, j, g, r): decay(j → i), 0 for j > i
    xdt = x * dt.view(b, s, g, heads // g, 1)  # (b, s, g, r, hd): dt_j·x_j
    scores = torch.einsum("bign,bjgn->bijg", C, B).unsqueeze(-1) * decay  # (b, i, j, g, r)
    y = torch.einsum("bijgr,bjgrp->bigrp", scores, xdt) + D.view(g, -1, 1) * x
    if every_position:
        h = torch.einsum("bijgr,bjgrp,bjgn->bigrpn", decay, xdt, B)  # (b, s, g, r, hd, n)
        start = cum.exp()[..., None, None]  # (b, s, g, r, 1, 1): decay from the start to i
    else:  # only the last position's: decay(j → s − 1) = decay[:, -1]
        h = torch.einsum("bjgr,bjgrp,bjgn->bgrpn", decay[:, -1], xdt, B)  # (b, g, r, hd, n)
        start = cum[:, -1].exp()[..., None, None]  # (b, g, r, 1, 1)
    if h0 is not None:
        h0 = h0.float().reshape(b, g, heads // g, hd, n)
        y = y + torch.einsum("bign,bgrpn->bigrp", C, h0) * cum.exp().unsqueeze(-1)
        h = h + start * (h0.unsqueeze(1) if every_position else h0)
    h = h.reshape(b, s, heads, hd, n) if every_position else h.reshape(b, heads, hd, n)
    return y.reshape(b, s, heads, hd), h


def ssm_after_each_position(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, h0: torch.Tensor | None
) -> torch.Tensor:
    """SSM states after each of the s positions, (b, s, heads, head_dim, d_state), by the
    recurrence h_k = exp(dt_k·A)·h_{k−1} + dt_k·x_k ⊗ B_k — s is a drafted block of a few
    tokens (speculative decoding rolls back to one of these), so a loop is cheap and exact.

    x (b, s, heads, head_dim), dt (b, s, heads), A (heads,), B (b, s, groups, d_state)."""
    b, s, heads, head_dim = x.shape
    B = B.float().repeat_interleave(heads // B.shape[2], dim=2)  # (b, s, heads, d_state)
    state = x.new_zeros(b, heads, head_dim, B.shape[-1], dtype=torch.float32) if h0 is None else h0
    states = []
    for k in range(s):
        decay = torch.exp(dt[:, k] * A)[..., None, None]  # (b, heads, 1, 1)
        update = dt[:, k, :, None, None] * x[:, k, :, :, None].float() * B[:, k, :, None, :]
        state = state.float() * decay + update  # (b, heads, head_dim, d_state)
        states.append(state)
    return torch.stack(states, dim=1)


def attention_qkv(attention: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``NemotronHAttention`` projections of (b, s, d) → q (b, heads, s, hd), k/v (b, kv, s, hd)."""
    b, s, _ = hidden.shape
    shape = (b, s, -1, attention.head_dim)
    return tuple(
        proj(hidden).view(shape).transpose(1, 2)
        for proj in (attention.q_proj, attention.k_proj, attention.v_proj)
    )


def attention_out(attention: nn.Module, context: torch.Tensor) -> torch.Tensor:
    """Attention output (b, heads, s, hd) → output projection (b, s, d)."""
    b, _, s, _ = context.shape
    return attention.o_proj(context.transpose(1, 2).reshape(b, s, -1))


def causal_attention(q, k, v, key_valid: torch.Tensor | None, mask=None) -> torch.Tensor:
    """The s newest positions q (b, heads, s, hd) attend causally to all P + s keys k/v
    (b, kv, P + s, hd); ``key_valid`` (b, P + s) masks left padding, and a query always sees
    itself so that fully padded rows stay finite. A ready ``mask`` (b, 1, s, keys) replaces
    both (a static cache's, ``ContextCache.causal_mask``)."""
    gqa = q.shape[1] != k.shape[1]
    if mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    new, total = q.shape[2], k.shape[2]
    if new == total and key_valid is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    query_pos = torch.arange(total - new, total, device=q.device).unsqueeze(1)  # (s, 1)
    key_pos = torch.arange(total, device=q.device).unsqueeze(0)  # (1, P + s)
    mask = key_pos <= query_pos  # (s, P + s)
    if key_valid is not None:
        mask = (mask & key_valid.unsqueeze(1)) | (key_pos == query_pos)  # (b, s, P + s)
        mask = mask.unsqueeze(1)  # (b, 1, s, P + s)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def block_attention(q, k, v, cache: ContextCache, layer: int, causal_in_block: bool):
    """The block's queries q (b, heads, S, hd) attend to the context K/V of ``layer`` (every
    cached position, padding masked) and to the block's own k/v (b, kv, S, hd) — bidirectional,
    or causal with ``causal_in_block`` (``ContextCache.block_kv`` / ``block_mask``: no copy of
    the context K/V when the cache has room, one mask per block)."""
    keys, values = cache.block_kv(layer, k, v)
    mask = cache.block_mask(q.shape[2], causal_in_block, q.device)
    return F.scaled_dot_product_attention(
        q, keys, values, attn_mask=mask, enable_gqa=q.shape[1] != keys.shape[1]
    )
