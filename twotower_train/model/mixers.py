"""Mixer forwards with explicit state in/out, on Megatron-Core's own modules and parameters.

Megatron's ``MambaMixer`` trains through a fused kernel that takes no initial state and returns
none, and its ``SelfAttention`` hides K/V inside ``forward``. The two towers need both:

* the context tower returns, per Mamba layer, the conv and SSM states at every block boundary
  and, per attention layer, K/V for every position;
* the denoiser seeds each block's Mamba scan with those states and attends to those K/V.

So these functions reuse the modules' projections and parameters (``in_proj``, ``conv1d_*``,
``A_log``, ``D``, ``dt_bias``, ``norm``, ``out_proj``; ``linear_qkv``, ``linear_proj``) and do
the state-carrying math with the conv and SSD scan :mod:`twotower_train.backends` picks per call
(GPU kernels, or the pure-torch ops of :mod:`twotower_train.ops`, which share one signature).
Tensor/sequence parallelism comes from the projections themselves: ``in_proj``/``linear_qkv``
gather the sequence and hold the local heads, ``out_proj``/``linear_proj`` reduce(-scatter)
back.

Layout: Megatron's (s, b, h) for hidden states; (b, heads, s, d) for attention tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from megatron.core.ssm.mamba_mixer import MambaMixer
from megatron.core.transformer.attention import SelfAttention

from twotower_train import backends
from twotower_train.decoding.cache import MambaStates
from twotower_train.ops.conv import conv_step
from twotower_train.ops.ssd import SSDOutput, ssd_step


@dataclass
class MambaOutput:
    out: torch.Tensor  # (s, b, d) — before the residual add
    final: MambaStates  # after the last position (per block when blocks > 1)
    boundaries: MambaStates | None = None  # (b, s/stride + 1, ...) when state_stride is set


def mamba_forward(
    mixer: MambaMixer,
    hidden: torch.Tensor,
    *,
    initial: MambaStates | None = None,
    blocks: int = 1,
    state_stride: int | None = None,
    valid: torch.Tensor | None = None,
    scan_dtype: torch.dtype | None = None,
) -> MambaOutput:
    """Mamba-2 mixer over ``hidden`` (s, b, d) with seeded / returned states.

    Args:
        initial: states to start from; with ``blocks`` > 1 one state per block, shaped
            (b·blocks, …) in (batch, block) order.
        blocks: split the sequence into this many equal blocks, each scanned independently from
            its own initial state (the denoiser's vectorised training forward).
        state_stride: also return the states at every multiple of this many positions
            (the context tower's block boundaries); needs ``blocks == 1``.
        valid: (b, s) bool, False at left-padding positions, which then leave every state
            unchanged (their conv input and step size are zeroed).
        scan_dtype: run the SSD scan in this dtype (:func:`ssd_in_dtype`); its output stays
            in it through the gated norm, whose output goes back to the activation dtype.
            None: the activation dtype (``model.denoiser_scan_dtype``).
    """
    if mixer.cp.cp_size != 1:
        raise NotImplementedError("two-tower Mamba layers do not support context parallelism")
    zxbcdt, _ = mixer.in_proj(hidden)  # (s, b, proj_local); the sequence is gathered under SP
    d_inner, groups, d_state = mixer.d_inner_local_tp, mixer.ngroups_local_tp, mixer.d_state
    heads, head_dim = mixer.nheads_local_tp, mixer.headdim
    conv_dim = d_inner + 2 * groups * d_state
    z, xbc, dt = torch.split(
        rearrange(zxbcdt, "s b p -> b s p"), [d_inner, conv_dim, heads], dim=-1
    )
    dt = F.softplus(dt.float() + mixer.dt_bias.float())  # (b, s, heads)
    if valid is not None:
        keep = valid.unsqueeze(-1)  # (b, s, 1)
        xbc = xbc * keep
        dt = dt * keep
    if blocks > 1:
        if state_stride is not None:
            raise ValueError("state_stride is only supported for a single block")
        # (b, blocks·S, ·) → (b·blocks, S, ·): each block scans from its own seed.
        z, xbc, dt = (rearrange(t, "b (n s) p -> (b n) s p", n=blocks) for t in (z, xbc, dt))
    conv_weight = rearrange(mixer.conv1d_weight, "d 1 w -> d w")
    if xbc.shape[1] == 1 and blocks == 1 and state_stride is None and not torch.is_grad_enabled():
        return _mamba_step(mixer, z, xbc, dt, conv_weight, initial)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad
        for t in (
            zxbcdt,
            conv_weight,
            mixer.A_log,
            mixer.D,
            mixer.dt_bias,
            *((initial.conv, initial.ssm) if initial is not None else ()),
        )
    )
    # The implementations for this call (kernels or the pure-torch reference), with the
    # signatures of ops.conv.causal_conv1d and ops.ssd.ssd_scan.
    causal_conv1d = backends.mamba_conv(xbc.device, needs_grad=needs_grad)
    activation_dtype = xbc.dtype
    xbc, conv_final, conv_bounds = causal_conv1d(
        xbc,
        conv_weight,
        mixer.conv1d_bias,
        initial_state=None if initial is None else initial.conv.to(xbc.dtype),
        activation="silu",
        state_stride=state_stride,
    )
    x, B, C = torch.split(xbc, [d_inner, groups * d_state, groups * d_state], dim=-1)
    D = mixer.D.float()
    scan = ssd_in_dtype(
        rearrange(x, "b s (h p) -> b s h p", p=head_dim),
        dt,
        -torch.exp(mixer.A_log.float()),
        rearrange(B, "b s (g n) -> b s g n", g=groups),
        rearrange(C, "b s (g n) -> b s g n", g=groups),
        mixer.chunk_size,
        D=rearrange(D, "(h p) -> h p", p=head_dim) if mixer.D_has_hdim else D,
        z=rearrange(z, "b s (h p) -> b s h p", p=head_dim),
        initial_state=None if initial is None else initial.ssm,
        state_stride=state_stride,
        needs_grad=needs_grad,
        scan_dtype=scan_dtype,
    )
    y = rearrange(scan.y, "b s h p -> b s (h p)")
    if blocks > 1:
        y = rearrange(y, "(b n) s p -> b (n s) p", n=blocks)
    y = mixer.norm(rearrange(y, "b s p -> s b p").contiguous())  # gated norm; gate already in y
    out, _ = mixer.out_proj(y.to(activation_dtype))
    boundaries = None
    if state_stride is not None:
        boundaries = MambaStates(conv=conv_bounds, ssm=scan.boundary_states)
    final = MambaStates(conv=conv_final, ssm=scan.final_state)
    return MambaOutput(out=out, final=final, boundaries=boundaries)


def ssd_in_dtype(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    *,
    D: torch.Tensor,
    z: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    state_stride: int | None = None,
    needs_grad: bool,
    scan_dtype: torch.dtype | None = None,
) -> SSDOutput:
    """One mixer call's SSD scan (:func:`twotower_train.ops.ssd.ssd_scan`'s tensors; ``dt``
    already discretised) on the implementation :func:`backends.mamba_scan` picks.

    ``scan_dtype`` (e.g. fp32 for bf16 activations): x, B, C, z and the seed are cast to it
    first, so the kernel multiplies and accumulates in it, and ``y`` comes back in it. The
    chunk length is the mixer's chunk size capped at the sequence length (a block of S < Q is
    one chunk of S)."""
    if scan_dtype is not None:
        x, B, C = x.to(scan_dtype), B.to(scan_dtype), C.to(scan_dtype)
        z = None if z is None else z.to(scan_dtype)
        initial_state = None if initial_state is None else initial_state.to(scan_dtype)
    ssd_scan = backends.mamba_scan(x.device, needs_grad=needs_grad, state_stride=state_stride)
    return ssd_scan(
        x,
        dt,
        A,
        B,
        C,
        min(chunk_size, x.shape[1]),
        D=D,
        z=z,
        dt_softplus=False,
        initial_state=initial_state,
        state_stride=state_stride,
    )


def _mamba_step(mixer, z, xbc, dt, conv_weight, initial: MambaStates | None) -> MambaOutput:
    """One position (an AR step, a mock-AR query) as the recurrence itself — the conv window
    and one SSM state update (``ops.conv.conv_step``, ``ops.ssd.ssd_step``) — instead of a
    chunked scan over a sequence of one. z, xbc, dt: (b, 1, ·)."""
    d_inner, groups, d_state = mixer.d_inner_local_tp, mixer.ngroups_local_tp, mixer.d_state
    heads, head_dim = mixer.nheads_local_tp, mixer.headdim
    bsz, width = xbc.shape[0], conv_weight.shape[-1]
    conv = initial.conv if initial is not None else xbc.new_zeros(bsz, width - 1, xbc.shape[-1])
    xbc_t, conv_state = conv_step(conv, xbc[:, 0], conv_weight, mixer.conv1d_bias, "silu")
    x, B, C = torch.split(xbc_t, [d_inner, groups * d_state, groups * d_state], dim=-1)
    ssm = (
        initial.ssm
        if initial is not None
        else x.new_zeros(bsz, heads, head_dim, d_state, dtype=torch.float32)
    )
    D = mixer.D.float()
    y, ssm_state = ssd_step(
        ssm,
        x.reshape(bsz, heads, head_dim),
        dt[:, 0],
        -torch.exp(mixer.A_log.float()),
        B.reshape(bsz, groups, d_state),
        C.reshape(bsz, groups, d_state),
        D=rearrange(D, "(h p) -> h p", p=head_dim) if mixer.D_has_hdim else D,
        z_t=z[:, 0].reshape(bsz, heads, head_dim),
    )
    y = mixer.norm(y.reshape(1, bsz, heads * head_dim))  # gated norm; gate already in y
    out, _ = mixer.out_proj(y.to(xbc.dtype))
    return MambaOutput(out=out, final=MambaStates(conv=conv_state, ssm=ssm_state))


def attention_qkv(
    attention: SelfAttention, hidden: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Projections of ``hidden`` (s, b, d) → q (b, heads, s, hd), k/v (b, kv_heads, s, hd)."""
    q, k, v = attention.get_query_key_value_tensors(hidden)  # (s, b, heads, hd)
    return tuple(rearrange(t, "s b h d -> b h s d") for t in (q, k, v))


def attention_out(attention: SelfAttention, context: torch.Tensor) -> torch.Tensor:
    """Attention output (b, heads, s, hd) → output projection (s, b, d)."""
    out, _ = attention.linear_proj(rearrange(context, "b h s d -> s b (h d)").contiguous())
    return out


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_valid: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The context tower's attention: the S newest positions query all P+S keys causally.

    q (b, heads, S, hd); k/v (b, kv_heads, P+S, hd) — cached keys followed by the new ones.
    ``key_valid`` (b, P+S) marks left padding; a query always sees itself, so fully padded rows
    stay finite. Without a cache and padding this is plain causal SDPA (flash on GPU). A
    ready ``mask`` (b, 1, S, keys) replaces both (a static cache's, ``ContextCache.causal_mask``).
    """
    gqa = q.shape[1] != k.shape[1]
    if mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    new, total = q.shape[2], k.shape[2]
    if new == total and key_valid is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    query_pos = torch.arange(total - new, total, device=q.device).unsqueeze(1)  # (S, 1)
    key_pos = torch.arange(total, device=q.device).unsqueeze(0)  # (1, P+S)
    mask = key_pos <= query_pos  # (S, P+S) causal
    if key_valid is not None:
        mask = (mask & key_valid.unsqueeze(1)) | (key_pos == query_pos)  # (b, S, P+S)
        mask = mask.unsqueeze(1)  # (b, 1, S, P+S)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
