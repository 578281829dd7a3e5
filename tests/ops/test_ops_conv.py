"""Causal depthwise conv1d (twotower_train.ops.conv) against F.conv1d with left zero padding.

Tolerance 1e-6: each output is a sum of w=4 fp32 products of O(1) values, computed by the
same conv primitive in a different layout (or, up to ``SHORT`` positions, as w shifted
multiply-adds), so differences are at the ulp level.
"""

import pytest
import torch
import torch.nn.functional as F

from twotower_train.ops.conv import SHORT, causal_conv1d, conv_step

TOL = dict(atol=1e-6, rtol=1e-6)


def reference(x, weight, bias, history=None, activation="silu"):
    """Channels-first conv1d over [history, x] with padding w-1, keeping the causal outputs."""
    b, l, d = x.shape
    w = weight.shape[1]
    if history is None:
        history = torch.zeros(b, w - 1, d)
    seq = torch.cat([history, x], 1).transpose(1, 2)  # (b, d, w-1+l)
    y = F.conv1d(seq, weight.unsqueeze(1), bias, padding=w - 1, groups=d)[..., : seq.shape[-1]]
    y = y[..., w - 1 :].transpose(1, 2)  # drop outputs for history positions -> (b, l, d)
    return F.silu(y) if activation == "silu" else y


def inputs(b=2, l=32, d=6, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, l, d, generator=g),
        torch.randn(d, w, generator=g),
        torch.randn(d, generator=g),
        torch.randn(b, w - 1, d, generator=g),
    )


@pytest.mark.parametrize("activation", ["silu", None])
@pytest.mark.parametrize("use_init", [False, True])
@pytest.mark.parametrize("length", [1, 16, SHORT, SHORT + 1, 64])  # both sides of the short path
def test_matches_reference(activation, use_init, length):
    x, w, bias, init = inputs(l=length)
    y, final, _ = causal_conv1d(
        x, w, bias, initial_state=init if use_init else None, activation=activation
    )
    torch.testing.assert_close(
        y, reference(x, w, bias, init if use_init else None, activation), **TOL
    )
    history = init if use_init else torch.zeros_like(init)
    torch.testing.assert_close(final, torch.cat([history, x], 1)[:, -3:], atol=0, rtol=0)


@pytest.mark.parametrize("stride", [4, 8, 16, 32])
def test_boundary_states(stride):
    x, w, bias, init = inputs()
    _, final, states = causal_conv1d(x, w, bias, initial_state=init, state_stride=stride)
    full = torch.cat([init, x], 1)  # position t of x is row t + 3
    assert states.shape == (2, 32 // stride + 1, 3, 6)
    for k in range(32 // stride + 1):
        p = k * stride
        torch.testing.assert_close(states[:, k], full[:, p : p + 3], atol=0, rtol=0)
    torch.testing.assert_close(states[:, 0], init, atol=0, rtol=0)
    torch.testing.assert_close(states[:, -1], final, atol=0, rtol=0)


def test_zero_history_before_start():
    x, w, bias, _ = inputs()
    _, _, states = causal_conv1d(x, w, bias, state_stride=1)
    assert torch.all(states[:, 0] == 0)
    torch.testing.assert_close(
        states[:, 2], torch.cat([torch.zeros(2, 1, 6), x[:, :2]], 1), atol=0, rtol=0
    )


def test_resume_from_boundary_and_step_chain():
    x, w, bias, init = inputs()
    y, final, states = causal_conv1d(x, w, bias, initial_state=init, state_stride=8)
    y_tail, final_tail, _ = causal_conv1d(x[:, 16:], w, bias, initial_state=states[:, 2])
    torch.testing.assert_close(y_tail, y[:, 16:], **TOL)
    torch.testing.assert_close(final_tail, final, atol=0, rtol=0)
    state, ys = init, []
    for t in range(x.shape[1]):
        y_t, state = conv_step(state, x[:, t], w, bias, "silu")
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), y, **TOL)
    torch.testing.assert_close(state, final, atol=0, rtol=0)


def test_gradients_reach_inputs_and_history():
    x, w, bias, init = (t.double().requires_grad_() for t in inputs(l=8))
    y, _, states = causal_conv1d(x, w, bias, initial_state=init, state_stride=4)
    (y.sum() + states.sum()).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (x, w, bias, init))
