"""Chunked SSD scan (twotower_train.ops.ssd) against the naive per-step recurrence.

Tolerances: everything is fp32 with O(1) inputs; the chunked form reorders sums of at most
~64 terms of size O(1-10), so agreement is ~1e-6 absolute. We allow atol=rtol=1e-4 on y (values
up to ~20 after D and gating) and 1e-5 on states, i.e. ~100 fp32 ulps of slack, far below any
real bug (a wrong decay or an off-by-one position is an O(1) error).
"""

import pytest
import torch

from twotower_train.ops.ssd import ssd_scan, ssd_sequential, ssd_step

Y_TOL = dict(atol=1e-4, rtol=1e-4)
STATE_TOL = dict(atol=1e-5, rtol=1e-5)


def make_inputs(b=2, l=64, h=4, p=3, g=2, n=5, seed=0, d_shape="h", with_z=True):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    D = r(h) if d_shape == "h" else r(h, p) if d_shape == "hp" else None
    return dict(
        x=r(b, l, h, p),
        dt=r(b, l, h),
        A=-(torch.rand(h, generator=gen) * 2 + 0.1),
        B=r(b, l, g, n),
        C=r(b, l, g, n),
        D=D,
        z=r(b, l, h, p) if with_z else None,
        dt_bias=r(h) * 0.5,
        init=r(b, h, p, n),
    )


def run(fn, inp, chunk, init=True, stride=None):
    return fn(
        inp["x"],
        inp["dt"],
        inp["A"],
        inp["B"],
        inp["C"],
        chunk,
        D=inp["D"],
        z=inp["z"],
        dt_bias=inp["dt_bias"],
        dt_softplus=True,
        initial_state=inp["init"] if init else None,
        state_stride=stride,
    )


@pytest.mark.parametrize("chunk", [16, 32])
@pytest.mark.parametrize("stride", [4, 8, 16])
@pytest.mark.parametrize("init", [False, True])
def test_scan_matches_sequential_with_boundaries(chunk, stride, init):
    inp = make_inputs(l=64, d_shape="hp" if init else "h")
    got, ref = (
        run(ssd_scan, inp, chunk, init, stride),
        run(ssd_sequential, inp, chunk, init, stride),
    )
    torch.testing.assert_close(got.y, ref.y, **Y_TOL)
    torch.testing.assert_close(got.final_state, ref.final_state, **STATE_TOL)
    assert got.boundary_states.shape == (2, 64 // stride + 1, 4, 3, 5)
    torch.testing.assert_close(got.boundary_states, ref.boundary_states, **STATE_TOL)
    torch.testing.assert_close(got.boundary_states[:, -1], got.final_state, atol=0, rtol=0)
    expected0 = inp["init"] if init else torch.zeros_like(inp["init"])
    torch.testing.assert_close(got.boundary_states[:, 0], expected0, atol=0, rtol=0)


@pytest.mark.parametrize(
    "l,chunk,stride",
    [(40, 16, 8), (60, 32, 4), (48, 32, 24), (96, 16, 32), (256, 128, 32), (36, 16, 12)],
)
def test_lengths_not_multiple_of_chunk_and_odd_strides(l, chunk, stride):
    # covers padding, S > chunk, and S that neither divides nor is divided by the chunk size
    inp = make_inputs(l=l, g=1, d_shape="hp")
    got, ref = (
        run(ssd_scan, inp, chunk, True, stride),
        run(ssd_sequential, inp, chunk, True, stride),
    )
    torch.testing.assert_close(got.y, ref.y, **Y_TOL)
    torch.testing.assert_close(got.final_state, ref.final_state, **STATE_TOL)
    torch.testing.assert_close(got.boundary_states, ref.boundary_states, **STATE_TOL)


def test_no_optional_terms_and_group_per_head():
    # g == h, no D / z / dt_bias / softplus, dt already positive
    inp = make_inputs(l=33, g=4, d_shape=None, with_z=False)
    dt = inp["dt"].abs()
    args = (inp["x"], dt, inp["A"], inp["B"], inp["C"], 16)
    got, ref = ssd_scan(*args), ssd_sequential(*args)
    torch.testing.assert_close(got.y, ref.y, **Y_TOL)
    torch.testing.assert_close(got.final_state, ref.final_state, **STATE_TOL)
    assert got.boundary_states is None


def test_dt_limit_and_half_precision_output():
    inp = make_inputs(l=24)
    kw = dict(D=inp["D"], dt_bias=inp["dt_bias"], dt_softplus=True, dt_limit=(0.05, 0.8))
    x16 = inp["x"].to(torch.bfloat16)
    got = ssd_scan(x16, inp["dt"], inp["A"], inp["B"], inp["C"], 16, **kw)
    ref = ssd_sequential(x16, inp["dt"], inp["A"], inp["B"], inp["C"], 16, **kw)
    assert got.y.dtype == torch.bfloat16 and got.final_state.dtype == torch.float32
    # both compute in fp32 from the same bf16 x; only the final bf16 rounding differs (~4e-3 rel)
    torch.testing.assert_close(got.y.float(), ref.y.float(), atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(got.final_state, ref.final_state, **STATE_TOL)


def test_step_chain_equals_scan():
    inp = make_inputs(l=20, d_shape="hp")
    full = run(ssd_scan, inp, 16)
    state, ys = inp["init"], []
    for t in range(20):
        y_t, state = ssd_step(
            state,
            inp["x"][:, t],
            inp["dt"][:, t],
            inp["A"],
            inp["B"][:, t],
            inp["C"][:, t],
            D=inp["D"],
            z_t=inp["z"][:, t],
            dt_bias=inp["dt_bias"],
            dt_softplus=True,
        )
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), full.y, **Y_TOL)
    torch.testing.assert_close(state, full.final_state, **STATE_TOL)


@pytest.mark.parametrize("split", [8, 24, 32])
def test_resume_from_boundary_state(split):
    # the denoiser seeds a block with the context tower's boundary state: scanning the suffix
    # from boundary state k must reproduce the full scan's suffix and final state
    inp = make_inputs(l=64)
    full = run(ssd_scan, inp, 16, True, stride=8)
    seed = full.boundary_states[:, split // 8]
    tail = {k: (v[:, split:] if k in ("x", "dt", "B", "C", "z") else v) for k, v in inp.items()}
    tail["init"] = seed
    rest = run(ssd_scan, tail, 16, True)
    torch.testing.assert_close(rest.y, full.y[:, split:], **Y_TOL)
    torch.testing.assert_close(rest.final_state, full.final_state, **STATE_TOL)


def test_boundary_states_do_not_depend_on_chunk_size():
    inp = make_inputs(l=64)
    a = run(ssd_scan, inp, 16, True, stride=8)
    b = run(ssd_scan, inp, 64, True, stride=8)
    torch.testing.assert_close(a.boundary_states, b.boundary_states, **STATE_TOL)
    torch.testing.assert_close(a.y, b.y, **Y_TOL)


def test_gradients_match_sequential():
    # float64 makes the comparison a pure correctness check (no fp32 reordering noise)
    inp = make_inputs(b=1, l=12, h=2, p=2, g=1, n=3, d_shape="h")
    leaves = {k: v.double().requires_grad_() for k, v in inp.items()}
    grads = []
    for fn in (ssd_scan, ssd_sequential):
        out = run(fn, leaves, 8, True, stride=4)
        loss = out.y.sin().sum() + out.final_state.cos().sum() + (out.boundary_states**2).sum()
        grads.append(torch.autograd.grad(loss, list(leaves.values())))
    for name, g_scan, g_seq in zip(leaves, *grads):
        torch.testing.assert_close(g_scan, g_seq, atol=1e-9, rtol=1e-9, msg=name)


def test_gradcheck_tiny():
    inp = make_inputs(b=1, l=6, h=2, p=1, g=1, n=2, d_shape="h")
    leaves = [inp[k].double().requires_grad_() for k in ("x", "dt", "A", "B", "C", "init")]

    def f(x, dt, A, B, C, init):
        out = ssd_scan(
            x,
            dt,
            A,
            B,
            C,
            4,
            D=inp["D"].double(),
            dt_softplus=True,
            initial_state=init,
            state_stride=2,
        )
        return out.y, out.boundary_states

    assert torch.autograd.gradcheck(f, leaves)
