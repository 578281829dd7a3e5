"""Depthwise causal conv1d as Mamba-2 applies it to `xBC`, in pure PyTorch, with conv states.

Channels-last layout: x (b, l, d), weight (d, w), bias (d,). Output
y_t = act(bias + sum_k weight[:, k] * x_{t - w + 1 + k}), with inputs before position 0 taken
from `initial_state` (b, w-1, d) or zeros. The conv state at position p is the w-1 pre-conv
inputs at positions p-w+1 .. p-1 (oldest first), the layout the two-tower model hands from the
context tower to the denoiser. Computed in fp32, returned in x's dtype; states keep x's dtype
(they are raw inputs).
"""

import torch
import torch.nn.functional as F

__all__ = ["causal_conv1d", "conv_states", "conv_step"]

SHORT = 32
"""Sequences up to this long (a decoding block) take the shifted multiply-add path."""


def _activate(y, activation):
    if activation in ("silu", "swish"):
        return F.silu(y)
    if activation is None:
        return y
    raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")


def causal_conv1d(
    x,
    weight,
    bias=None,
    *,
    initial_state=None,
    activation="silu",
    state_stride=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Returns (y (b, l, d), final_state (b, w-1, d), boundary_states (b, l//S + 1, w-1, d) or
    None), boundary k being the conv state at position k·S."""
    bsz, l, d = x.shape
    w = weight.shape[-1]
    assert weight.shape == (d, w), f"weight must be (d, w) = ({d}, w), got {tuple(weight.shape)}"
    if initial_state is None:
        initial_state = x.new_zeros(bsz, w - 1, d)
    assert initial_state.shape == (bsz, w - 1, d), "initial_state must be (b, w-1, d)"
    cd = torch.promote_types(x.dtype, torch.float32)  # fp32 math (fp64 for fp64 inputs)
    xp = torch.cat([initial_state.to(x.dtype), x], dim=1)  # history then inputs (b, w-1+l, d)
    if l <= SHORT:
        # A decoding block or step: w shifted multiply-adds in the channels-last layout cost a
        # fraction of the depthwise conv kernel's setup and its two transposes (same sums).
        xc, wc = xp.to(cd), weight.to(cd)
        y = xc[:, :l] * wc[:, 0]
        for k in range(1, w):
            y = y + xc[:, k : k + l] * wc[:, k]
        if bias is not None:
            y = y + bias.to(cd)
        y = _activate(y, activation).to(x.dtype)
    else:
        y = F.conv1d(
            xp.to(cd).transpose(1, 2),  # (b, d, w-1+l)
            weight.to(cd)[:, None, :],  # depthwise kernels (d, 1, w)
            bias.to(cd) if bias is not None else None,
            groups=d,
        )  # valid conv -> (b, d, l)
        y = _activate(y, activation).transpose(1, 2).to(x.dtype)
    return (y, *conv_states(x, initial_state, w, state_stride))


def conv_states(
    x,
    initial_state,
    width,
    state_stride=None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The conv states of a pass over x (b, l, d) that started from ``initial_state``
    (b, w-1, d) or zeros: (final_state (b, w-1, d), boundary_states (b, l//S + 1, w-1, d) or
    None). They are only gathers of pre-conv inputs, so every conv implementation shares them."""
    bsz, l, d = x.shape
    if initial_state is None:
        initial_state = x.new_zeros(bsz, width - 1, d)
    if state_stride is None:
        # inputs at l-w+1 .. l-1, reaching into the initial state when l < w-1
        tail = torch.cat([initial_state.to(x.dtype), x[:, -(width - 1) :]], dim=1)
        return tail[:, tail.shape[1] - (width - 1) :], None
    assert l % state_stride == 0, f"state_stride {state_stride} must divide seqlen {l}"
    xp = torch.cat([initial_state.to(x.dtype), x], dim=1)  # history then inputs (b, w-1+l, d)
    # window k of xp starting at k·S holds inputs at k·S-w+1 .. k·S-1
    idx = torch.arange(0, l + 1, state_stride, device=x.device)[:, None] + torch.arange(
        width - 1, device=x.device
    )  # (K, w-1)
    boundary = xp[:, idx]  # (b, K, w-1, d)
    return boundary[:, -1], boundary


def conv_step(
    state, x_t, weight, bias=None, activation="silu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step. state (b, w-1, d), x_t (b, d) -> (y_t (b, d), new_state (b, w-1, d))."""
    cd = torch.promote_types(x_t.dtype, torch.float32)
    window = torch.cat([state.to(x_t.dtype), x_t[:, None]], dim=1)  # (b, w, d)
    y = torch.einsum("bwd,dw->bd", window.to(cd), weight.to(cd))
    if bias is not None:
        y = y + bias.to(cd)
    return _activate(y, activation).to(x_t.dtype), window[:, 1:]
