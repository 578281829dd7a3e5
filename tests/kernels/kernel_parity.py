"""Mamba kernel vs pure-torch reference, quantity by quantity; prints one JSON object.

Run as its own process because the Triton interpreter must be on before triton is imported:

    TRITON_INTERPRET=1 python -m tests.kernels.kernel_parity            # CPU (interpreter), fp32
    python -m tests.kernels.kernel_parity --dtype bfloat16               # a CUDA host

Each entry is ``{"impl": <function the backend picked>, "max_abs_diff": d, "ref_max_abs": m}``
for one output, state or input gradient; :mod:`tests.kernels.test_kernel_parity` holds the
tolerances. Cases (tiny shapes, seconds each under the interpreter):

* ``scan_boundaries`` — the context tower's forward-only scan: outputs, final and block-boundary
  states, with the block size below the chunk size (S=8, Q=16) and above it off the chunk grid
  (S=24, Q=16), from zero and from a given initial state;
* ``conv_boundaries`` — the forward-only conv with an initial state and boundary states;
* ``scan_seeded`` — the denoiser's differentiable scan over (batch·blocks, S) with one initial
  state per block: outputs, final states and the gradients of every input;
* ``conv_seeded`` — the differentiable seeded conv: causal_conv1d, so CUDA hosts only (on a
  CPU the backend hands out the reference itself);
* ``two_tower`` — the tiny TwoTowerModel's training forward with every Mamba call on the kernels
  vs on the reference: context boundary states, denoiser logits and denoiser parameter grads;
* ``sampling`` — the samplers' no-grad path on the forward-only kernels: a left-padded prefill,
  a committed block, a denoised block (logits, cached conv and SSM states);
* ``flex_training`` — the denoiser's compiled block-sparse FlexAttention vs the dense mask,
  output and input gradients, plus its extra memory at two lengths (CUDA only; needs
  ``TORCHDYNAMO_DISABLE`` unset so ``torch.compile`` is live).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

import torch

from twotower_train import backends, cpu_compat, distributed
from twotower_train.diffusion import corrupt_blocks
from twotower_train.model.config import preset
from twotower_train.model.two_tower import TwoTowerModel
from twotower_train.ops.conv import causal_conv1d
from twotower_train.ops.ssd import ssd_scan

H, P, G, N, W = 4, 8, 2, 16, 4  # heads, head dim, groups, state, conv width


def _entry(impl, got, ref) -> dict:
    return {
        "impl": getattr(impl, "__name__", str(impl)),
        "max_abs_diff": (got.float() - ref.float()).abs().max().item(),
        "ref_max_abs": ref.float().abs().max().item(),
    }


@contextlib.contextmanager
def _reference_kernels():
    """Within the block, backends hands out the pure-torch ops."""
    previous = os.environ.get("TWOTOWER_MAMBA_KERNELS")
    os.environ["TWOTOWER_MAMBA_KERNELS"] = "torch"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TWOTOWER_MAMBA_KERNELS"]
        else:
            os.environ["TWOTOWER_MAMBA_KERNELS"] = previous


def _scan_inputs(batch, length, device, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    inputs = dict(
        x=r(batch, length, H, P),
        dt=torch.rand(batch, length, H, generator=g) * 0.5 + 0.05,  # already softplus'd
        A=-(torch.rand(H, generator=g) + 0.3),
        B=r(batch, length, G, N),
        C=r(batch, length, G, N),
        D=r(H),
        z=r(batch, length, H, P),
        init=r(batch, H, P, N) * 0.5,
    )
    # Activations in the run dtype; dt, A, D and the states stay fp32, as mamba_forward has them.
    low = {"x", "B", "C", "z"}
    return {k: v.to(device, dtype if k in low else torch.float32) for k, v in inputs.items()}


def scan_boundaries(device, dtype) -> dict:
    out = {}
    for name, (length, stride, seeded) in {
        "S8_Q16_zero": (32, 8, False),
        "S24_Q16_seeded": (48, 24, True),
    }.items():
        t = _scan_inputs(2, length, device, dtype, seed=length)
        impl = backends.mamba_scan(t["x"].device, needs_grad=False, state_stride=stride)
        args = (t["x"], t["dt"], t["A"], t["B"], t["C"], 16)
        kw = dict(
            D=t["D"], z=t["z"], initial_state=t["init"] if seeded else None, state_stride=stride
        )
        with torch.no_grad():
            got, ref = impl(*args, **kw), ssd_scan(*args, **kw)
        out[f"{name}.y"] = _entry(impl, got.y, ref.y)
        out[f"{name}.final_state"] = _entry(impl, got.final_state, ref.final_state)
        out[f"{name}.boundary_states"] = _entry(impl, got.boundary_states, ref.boundary_states)
    return out


def _conv_inputs(batch, length, device, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    dim = 24
    return (
        torch.randn(batch, length, dim, generator=g).to(device, dtype),
        (torch.randn(dim, W, generator=g) * 0.5).to(device, dtype),
        (torch.randn(dim, generator=g) * 0.1).to(device, dtype),
        torch.randn(batch, W - 1, dim, generator=g).to(device, dtype),
    )


def conv_boundaries(device, dtype) -> dict:
    x, w, b, init = _conv_inputs(2, 32, device, dtype, seed=1)
    impl = backends.mamba_conv(x.device, needs_grad=False)
    with torch.no_grad():
        got = impl(x, w, b, initial_state=init, activation="silu", state_stride=8)
        ref = causal_conv1d(x, w, b, initial_state=init, activation="silu", state_stride=8)
    return {
        "y": _entry(impl, got[0], ref[0]),
        "final_state": _entry(impl, got[1], ref[1]),
        "boundary_states": _entry(impl, got[2], ref[2]),
    }


def _grads(fn, leaves: dict, weights) -> tuple:
    """Outputs of ``fn`` and the grads of a fixed random projection of them w.r.t. leaves."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in leaves.items()}
    y, final = fn(**leaves)
    ((y.float() * weights[0]).sum() + (final.float() * weights[1]).sum()).backward()
    return y.detach(), final.detach(), {k: v.grad for k, v in leaves.items()}


def scan_seeded(device, dtype) -> dict:
    blocks, block = 2, 16  # (batch·blocks, S) = (4, 16), chunk 128 as in the Nano mixer
    t = _scan_inputs(2 * blocks, block, device, dtype, seed=7)
    impl = backends.mamba_scan(t["x"].device, needs_grad=True, state_stride=None)
    g = torch.Generator().manual_seed(8)
    weights = (
        torch.randn(t["x"].shape, generator=g).to(device),
        torch.randn(t["init"].shape, generator=g).to(device),
    )

    def run(scan):
        def fn(x, dt, A, B, C, D, z, init):
            res = scan(x, dt, A, B, C, min(128, block), D=D, z=z, initial_state=init)
            return res.y, res.final_state

        return _grads(fn, t, weights)

    y, final, grads = run(impl)
    y_ref, final_ref, grads_ref = run(ssd_scan)
    out = {"y": _entry(impl, y, y_ref), "final_state": _entry(impl, final, final_ref)}
    out.update({f"grad_{k}": _entry(impl, grads[k], grads_ref[k]) for k in grads})
    return out


def conv_seeded(device, dtype) -> dict:
    x, w, b, init = _conv_inputs(6, 16, device, dtype, seed=2)
    impl = backends.mamba_conv(x.device, needs_grad=True)
    weights = (
        torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).to(device),
        torch.zeros(init.shape, device=device),
    )

    def run(conv):
        def fn(x, w, b, init):
            y, final, _ = conv(x, w, b, initial_state=init, activation="silu")
            return y, final

        return _grads(fn, dict(x=x, w=w, b=b, init=init), weights)

    y, _, grads = run(impl)
    y_ref, _, grads_ref = run(causal_conv1d)
    out = {"y": _entry(impl, y, y_ref)}
    out.update({f"grad_{k}": _entry(impl, grads[k], grads_ref[k]) for k in grads})
    return out


def two_tower(device, dtype) -> dict:
    distributed.initialize(seed=0)
    # Fewer Mamba heads than the tiny preset: the interpreter's cost grows with the kernel grid.
    cfg = preset("tiny", mamba_num_heads=4)
    model = TwoTowerModel.build(cfg, params_dtype=dtype).to(device)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, cfg.vocab_size, (1, 32), generator=gen)
    block = 8
    c = corrupt_blocks(tokens, block, cfg.mask_token_id, generator=gen)
    tokens, noisy, t = tokens.to(device), c.noisy.to(device), c.t_realised.to(device)

    def run():
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            ctx = model.context_tower(tokens, state_stride=block, logits="none")
        logits = model(tokens, noisy, t, block)
        logits.float().square().mean().backward()
        grads = {
            n: p.grad.detach().clone()
            for n, p in model.denoiser.named_parameters()
            if p.grad is not None and "mixer" in n
        }
        return ctx.boundaries, logits.detach(), grads

    mamba_layer = cfg.pattern.index("M")
    context_scan = backends.mamba_scan(device, needs_grad=False, state_stride=block)
    context_conv = backends.mamba_conv(device, needs_grad=False)
    denoiser_scan = backends.mamba_scan(device, needs_grad=True, state_stride=None)
    bounds, logits, grads = run()
    with _reference_kernels():
        bounds_ref, logits_ref, grads_ref = run()
    out = {
        "context_ssm_boundaries": _entry(
            context_scan, bounds[mamba_layer].ssm, bounds_ref[mamba_layer].ssm
        ),
        "context_conv_boundaries": _entry(
            context_conv, bounds[mamba_layer].conv, bounds_ref[mamba_layer].conv
        ),
        "denoiser_logits": _entry(denoiser_scan, logits, logits_ref),
    }
    for name in grads:
        short = name.split("mixer.")[-1]
        out[f"denoiser_grad_{short}"] = _entry(denoiser_scan, grads[name], grads_ref[name])
    distributed.shutdown()
    return out


def sampling(device, dtype) -> dict:
    """The samplers' path: left-padded prefill, one committed block, one denoised block."""
    distributed.initialize(seed=0)
    cfg = preset("tiny", mamba_num_heads=4)
    model = TwoTowerModel.build(cfg, params_dtype=dtype).to(device).eval()
    gen = torch.Generator().manual_seed(5)
    prompts = torch.randint(4, cfg.vocab_size, (2, 16), generator=gen).to(device)
    valid = torch.ones(2, 16, dtype=torch.bool, device=device)
    valid[1, :5] = False  # the second prompt is 5 tokens shorter (left padding)
    block = torch.randint(4, cfg.vocab_size, (2, 8), generator=gen).to(device)
    noisy = block.clone()
    noisy[:, ::2] = cfg.mask_token_id
    t = torch.full((2,), 0.5, device=device)

    def run():
        prefill = model.prefill(prompts, valid, logits="last")
        advanced = model.advance(prefill.cache, block, logits="last")
        denoised = model.denoise_block(advanced.cache, noisy, t)
        layer = cfg.pattern.index("M")
        return advanced.logits, advanced.cache.mamba[layer], denoised

    scan = backends.mamba_scan(device, needs_grad=False, state_stride=None)
    conv = backends.mamba_conv(device, needs_grad=False)
    logits, states, denoised = run()
    with _reference_kernels():
        logits_ref, states_ref, denoised_ref = run()
    out = {
        "context_logits": _entry(scan, logits, logits_ref),
        "cache_ssm_state": _entry(scan, states.ssm, states_ref.ssm),
        "cache_conv_state": _entry(conv, states.conv, states_ref.conv),
        "denoiser_logits": _entry(scan, denoised, denoised_ref),
    }
    distributed.shutdown()
    return out


def flex_training(device, dtype) -> dict:
    """Compiled block-sparse FlexAttention vs the dense mask, forward and backward (CUDA)."""
    from twotower_train.ops import block_attention
    from twotower_train.ops.block_attention import AttentionBackend, denoiser_attention

    if device.type != "cuda":
        raise RuntimeError("flex_training needs CUDA (torch has no CPU FlexAttention backward)")
    g = torch.Generator().manual_seed(4)
    length, block, heads, kv_heads, dim = 2048, 16, 8, 2, 64
    q = torch.randn(1, heads, length, dim, generator=g)
    kvs = [torch.randn(1, kv_heads, length, dim, generator=g) for _ in range(4)]
    leaves = [t.to(device, dtype) for t in (q, *kvs)]
    weight = torch.randn(q.shape, generator=g).to(device)

    def run(backend):
        inputs = [t.detach().clone().requires_grad_(True) for t in leaves]
        out = denoiser_attention(*inputs, block, backend=backend)
        (out.float() * weight).sum().backward()
        return out.detach(), [t.grad for t in inputs]

    out, grads = run(AttentionBackend.FLEX)
    impl = "flex_compiled" if block_attention._compiled_flex is not None else "flex_eager"
    out_ref, grads_ref = run(AttentionBackend.DENSE)
    entries = {"out": _entry(impl, out, out_ref)}
    for name, got, ref in zip(["q", "k_ctx", "v_ctx", "k_noisy", "v_noisy"], grads, grads_ref):
        entries[f"grad_{name}"] = _entry(impl, got, ref)
    # Extra memory of forward+backward beyond the inputs: linear in L for the block-sparse
    # kernel, quadratic for the dense mask. (The first length reuses the compiled kernel.)
    memory = {}
    for n in (2048, 4096):
        ins = [
            torch.randn(1, h, n, dim, device=device, dtype=dtype, requires_grad=True)
            for h in (heads, kv_heads, kv_heads, kv_heads, kv_heads)
        ]
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        denoiser_attention(*ins, block, backend=AttentionBackend.FLEX).sum().backward()
        torch.cuda.synchronize()
        memory[f"L{n}"] = torch.cuda.max_memory_allocated() - base
    entries["extra_memory_bytes"] = memory
    return entries


CASES = {
    "scan_boundaries": scan_boundaries,
    "conv_boundaries": conv_boundaries,
    "scan_seeded": scan_seeded,
    "conv_seeded": conv_seeded,
    "two_tower": two_tower,
    "sampling": sampling,
    "flex_training": flex_training,
}
CUDA_ONLY = ("flex_training",)  # torch has no CPU FlexAttention backward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--cases", nargs="*", help="default: every case the device can run")
    args = parser.parse_args()
    cpu_compat.enable_triton_interpreter()  # no-op on a CUDA host
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.cases is None:  # flex_training needs CUDA: the default on a CPU leaves it out
        args.cases = [c for c in CASES if device.type == "cuda" or c not in CUDA_ONLY]
    dtype = getattr(torch, args.dtype)
    report = {"device": str(device), "dtype": args.dtype}
    for name in args.cases:
        wall, cpu = time.perf_counter(), time.process_time()
        report[name] = CASES[name](device, dtype)
        report[name]["seconds"] = {
            "wall": time.perf_counter() - wall,
            "cpu": time.process_time() - cpu,
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
