"""Mixer forwards with explicit state in / out, on transformers' ``nemotron_h`` modules and
their parameters (part of the Nemotron-TwoTower export; see ``modeling_nemotron_twotower.py``).

The stock ``NemotronHMamba2Mixer`` / ``NemotronHAttention`` forwards keep their state inside a
transformers cache; the two towers need it in the open: the context tower hands per-layer K/V
and Mamba conv / SSM states to the denoiser, which seeds its scans and attends to them. These
functions reuse the modules' projections and parameters, and transformers' ``causal_conv1d_fn``
/ ``mamba2_chunk_scan`` (the causal-conv1d / mamba-ssm kernels where installed, PyTorch
otherwise).

Layouts: hidden states (b, s, d); attention tensors (b, heads, s, head_dim); Mamba conv state
(b, conv_kernel − 1, conv_dim), SSM state (b, mamba_heads, mamba_head_dim, ssm_state), fp32.
"""

import torch
import torch.nn.functional as F
from torch import nn
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
    # The conv runs over history ⊕ new inputs; the first w − 1 outputs (zero-padded) are dropped.
    conv = causal_conv1d_fn(
        window.transpose(1, 2),
        mixer.conv1d.weight.squeeze(1),
        mixer.conv1d.bias,
        activation=mixer.activation,
    )[:, :, width - 1 :]  # (b, conv_dim, s)
    x, B, C = conv.transpose(1, 2).split([d_inner, groups * d_state, groups * d_state], dim=-1)
    x = x.reshape(b, s, heads, head_dim)
    B = B.reshape(b, s, groups, d_state)
    A = -torch.exp(mixer.A_log.float())  # (heads,)
    y, ssm = mamba2_chunk_scan(
        x,
        dt,
        A,
        B,
        C.reshape(b, s, groups, d_state),
        chunk_size=mixer.chunk_size,
        D=mixer.D,
        initial_states=None if initial is None else initial.ssm,
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
            ssm=ssm_after_each_position(x, dt, A, B, None if initial is None else initial.ssm),
        )
    return out, final, per_position


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


def causal_attention(q, k, v, key_valid: torch.Tensor | None) -> torch.Tensor:
    """The s newest positions q (b, heads, s, hd) attend causally to all P + s keys k/v
    (b, kv, P + s, hd); ``key_valid`` (b, P + s) masks left padding, and a query always sees
    itself so that fully padded rows stay finite."""
    gqa = q.shape[1] != k.shape[1]
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
