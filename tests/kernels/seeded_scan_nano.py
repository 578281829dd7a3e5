"""The denoiser's seeded Mamba scan at the Nano's real sizes, S < chunk, against a per-token
recurrence in fp64; prints one JSON line and a summary line, and exits 1 when a check fails.

The released two-tower code's seeded ``mamba_chunk_scan_combined`` gave garbage on H100 when a
block of S = 16 was scanned with chunk 128 (../shared/notes/released-model.md). This checks the
scan our denoiser runs — :func:`twotower_train.model.mixers.ssd_in_dtype` with the Nano mixer's
chunk size 128, on whatever :func:`twotower_train.backends.mamba_scan` picks for the call — at
64 heads × head dim 64, state 128, 8 groups, S = 16 and 32, bf16 activations (x, B, C, z),
fp32 step sizes, decays, D and seed states (what ``mamba_forward`` hands it), two sequences
(blocks) with their own seeds:

* ``train`` — a call that needs a gradient (the denoiser in training): on CUDA, or on the CPU
  under the Triton interpreter, mamba_ssm's differentiable Triton chunk scan with initial states;
* ``sample`` — a call without one (the denoiser in sampling): megatron-core's forward-only
  Triton varlen scan with initial states;
* both without kernels (CPU, no interpreter): the pure-torch ``ops/ssd.py`` scan.

Where the kernels run, the report also gives (``released_call``, diagnosis only, no tolerance)
mamba_ssm's scan called as the released code calls it: chunk 128 on S = 16, uncapped.

Each at ``scan_dtype`` fp32 (``model.denoiser_scan_dtype=fp32``, the released numerics and the
Nano recipe's) and, on CUDA only, bf16 (``activation``: under the interpreter both kernel
families' bf16 scans are off by ~6e9 × max |y|, alike, which points at the interpreter's
handling of bf16 memory rather than at the kernels).

    TRITON_INTERPRET=1 python -m tests.kernels.seeded_scan_nano   # CPU, the Triton kernels
    python -m tests.kernels.seeded_scan_nano                      # CPU torch path, or CUDA

Tolerances, relative to the largest |reference| of each quantity (y, final state):

* fp32 on the CPU (interpreter or torch): 1e-4. Same bf16-rounded inputs, fp32 instead of fp64
  arithmetic over ≤ 32 steps × 128 state terms: a few 1e-7 relative; a wrongly seeded or decayed
  state is O(1) (``seed_share`` is how much of y the seed carries, checked to be ≥ 10 %).
* fp32 on a GPU: 5e-3. Triton's ``tl.dot`` multiplies fp32 tiles in TF32 (10-bit mantissa,
  2^-11 ≈ 4.9e-4 per product).
* bf16 on a GPU: 2e-2. The kernels multiply bf16 tiles (2^-8 ≈ 3.9e-3 per rounding) and keep
  some partial states in bf16; y is returned in bf16.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

HEADS, HEAD_DIM, STATE, GROUPS, CHUNK = 64, 64, 128, 8, 128  # Nemotron-3-Nano's Mamba-2
SEQUENCES = 2  # (batch·blocks): each block scans from its own seed
BLOCK_SIZES = (16, 32)
TOLERANCE = {("cpu", "fp32"): 1e-4, ("cuda", "fp32"): 5e-3, ("cuda", "bf16"): 2e-2}
SCAN_DTYPES = {"fp32": torch.float32, "bf16": None}  # None: the activation dtype (bf16)
MIN_SEED_SHARE = 0.1
# What backends must hand out per path where the kernels run (CUDA, or the interpreter): a
# silent fall-back to the pure-torch scan must not pass as a kernel check.
KERNEL_IMPLS = {"train": "ssd_scan_differentiable", "sample": "ssd_scan_varlen"}


def nano_inputs(length: int, seed: int, device) -> dict[str, torch.Tensor]:
    """Inputs as ``mamba_forward`` hands them to the scan, at Nano initial-value ranges:
    activations bf16; dt = softplus(·) in [1e-3, 0.1] (the Nano's time_step range), A = −exp(A_log)
    in [−16, −1], D ≈ 1, seeds fp32."""
    g = torch.Generator().manual_seed(seed)
    b, h, p, n, gr = SEQUENCES, HEADS, HEAD_DIM, STATE, GROUPS
    log_dt = torch.empty(b, length, h).uniform_(math.log(1e-3), math.log(0.1), generator=g)
    t = dict(
        x=torch.randn(b, length, h, p, generator=g).bfloat16(),
        B=torch.randn(b, length, gr, n, generator=g).bfloat16(),
        C=torch.randn(b, length, gr, n, generator=g).bfloat16(),
        z=torch.randn(b, length, h, p, generator=g).bfloat16(),
        dt=log_dt.exp(),
        A=-torch.empty(h).uniform_(1.0, 16.0, generator=g),
        D=1.0 + 0.1 * torch.randn(h, generator=g),
        init=torch.randn(b, h, p, n, generator=g),
    )
    return {k: v.to(device) for k, v in t.items()}


def recurrence(t: dict[str, torch.Tensor], *, seeded: bool = True) -> tuple[torch.Tensor, ...]:
    """Per-token Mamba-2 recurrence in fp64 (independent of the project's ops):
    h_t = exp(dt_t A) h_{t-1} + dt_t x_t ⊗ B_t;  y_t = (C_t · h_t + D x_t) · silu(z_t).
    Head i reads group i // (heads / groups). Returns y (b, l, h, p), final state (b, h, p, n)."""
    x, B, C, z = (t[k].double() for k in ("x", "B", "C", "z"))
    dt, A, D = t["dt"].double(), t["A"].double(), t["D"].double()
    heads_per_group = HEADS // GROUPS
    B = B.repeat_interleave(heads_per_group, dim=2)  # (b, l, h, n)
    C = C.repeat_interleave(heads_per_group, dim=2)
    state = t["init"].double() if seeded else torch.zeros_like(t["init"], dtype=torch.float64)
    ys = []
    for i in range(x.shape[1]):
        decay = torch.exp(dt[:, i] * A)  # (b, h)
        inject = (dt[:, i, :, None] * x[:, i])[..., None] * B[:, i, :, None, :]  # (b, h, p, n)
        state = decay[..., None, None] * state + inject
        y = (state * C[:, i, :, None, :]).sum(-1) + D[:, None] * x[:, i]  # (b, h, p)
        ys.append(y * F.silu(z[:, i]))
    return torch.stack(ys, dim=1), state


def _entry(impl, got, ref, seconds) -> dict:
    return {
        "impl": getattr(impl, "__name__", str(impl)),
        "max_abs_diff": (got.double() - ref).abs().max().item(),
        "ref_max_abs": ref.abs().max().item(),
        "seconds": round(seconds, 2),
    }


def run(device: torch.device, scan_dtypes: list[str]) -> dict:
    from twotower_train import backends, cpu_compat
    from twotower_train.model.mixers import ssd_in_dtype

    kernels = device.type == "cuda" or cpu_compat.triton_interpreter_active()
    report: dict = {"device": str(device), "kernels": kernels, "cases": {}}
    for length in BLOCK_SIZES:
        t = nano_inputs(length, seed=length, device=device)
        y_ref, final_ref = recurrence(t)
        y_unseeded, _ = recurrence(t, seeded=False)
        share = (y_ref - y_unseeded).abs().max().item() / y_ref.abs().max().item()
        report["cases"][f"S{length}.seed_share"] = share
        for path, needs_grad in (("train", True), ("sample", False)):
            for name in scan_dtypes:
                impl = backends.mamba_scan(device, needs_grad=needs_grad, state_stride=None)
                start = time.perf_counter()
                with torch.enable_grad() if needs_grad else torch.no_grad():
                    x = t["x"].detach().requires_grad_(needs_grad)  # a leaf, as in training
                    out = ssd_in_dtype(
                        x,
                        t["dt"],
                        t["A"],
                        t["B"],
                        t["C"],
                        CHUNK,
                        D=t["D"],
                        z=t["z"],
                        initial_state=t["init"],
                        needs_grad=needs_grad,
                        scan_dtype=SCAN_DTYPES[name],
                    )
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                key = f"S{length}.{path}.{name}"
                report["cases"][f"{key}.y"] = _entry(impl, out.y.detach(), y_ref, seconds)
                report["cases"][f"{key}.final_state"] = _entry(
                    impl, out.final_state.detach(), final_ref, seconds
                )
    if kernels and backends.have_mamba_ssm():
        report["released_call"] = released_call(device)
    return report


def released_call(device: torch.device) -> dict:
    """For diagnosis only (no tolerance): mamba_ssm's seeded scan called as the released code
    calls it — fp32 inputs, chunk 128 on a block of S = 16, no cap — relative to the recurrence.
    (Under the interpreter it is exact too, so the released defect is not reproduced there.)"""
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    t = nano_inputs(16, seed=16, device=device)
    y_ref, final_ref = recurrence(t)
    y, final = mamba_chunk_scan_combined(
        t["x"].float(), t["dt"], t["A"], t["B"].float(), t["C"].float(), CHUNK,
        D=t["D"], z=t["z"].float(), initial_states=t["init"], return_final_states=True,
    )  # fmt: skip
    return {
        name: (got.double() - ref).abs().max().item() / ref.abs().max().item()
        for name, got, ref in (("y", y, y_ref), ("final_state", final, final_ref))
    }


def failures(report: dict) -> list[str]:
    """What is out of tolerance in a report (empty: all checks pass)."""
    device = "cuda" if report["device"].startswith("cuda") else "cpu"
    bad = []
    for key, e in report["cases"].items():
        if key.endswith("seed_share"):
            if not e >= MIN_SEED_SHARE:
                bad.append(f"{key}: the seed carries only {e:.3f} of y: the check is too weak")
            continue
        path, name = key.split(".")[1:3]
        if report["kernels"] and e["impl"] != KERNEL_IMPLS[path]:
            bad.append(f"{key}: backends picked {e['impl']}, not the kernel {KERNEL_IMPLS[path]}")
        tol = TOLERANCE[(device, name)]
        if not e["max_abs_diff"] <= tol * e["ref_max_abs"]:
            bad.append(
                f"{key}: max abs diff {e['max_abs_diff']:.3e} > {tol:g} · {e['ref_max_abs']:.3e}"
            )
    return bad


def summary(report: dict) -> str:
    """One line: the largest relative error per scan dtype and the implementations checked."""
    worst: dict[str, float] = {}
    impls = set()
    for key, e in report["cases"].items():
        if isinstance(e, dict):
            name = key.split(".")[2]
            worst[name] = max(worst.get(name, 0.0), e["max_abs_diff"] / e["ref_max_abs"])
            impls.add(e["impl"])
    errors = ", ".join(
        f"{name} scan {err:.1e}" for name, err in worst.items()
    )  # no "|": a table cell
    verdict = "FAIL: " + "; ".join(report["failures"]) if report["failures"] else "ok"
    if "released_call" in report:  # not checked: the released code's own call, for diagnosis
        verdict += f" (released call, chunk {CHUNK} on S=16: y {report['released_call']['y']:.1e})"
    return (
        f"S={'/'.join(map(str, BLOCK_SIZES))} < chunk {CHUNK}, {HEADS}x{HEAD_DIM} heads, state "
        f"{STATE}, {GROUPS} groups on {report['device']}: max abs error / max abs y vs an fp64 "
        "recurrence: "
        f"{errors} ({', '.join(sorted(impls))}): {verdict}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from twotower_train import cpu_compat

    if os.environ.get("TRITON_INTERPRET") == "1":
        # The largest tiles: at these sizes the smallest ones' grids take the interpreter
        # tens of times longer (every config computes the same result).
        cpu_compat.enable_triton_interpreter(tiles="largest")  # no-op on a CUDA host
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scan_dtypes = ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]
    report = run(device, scan_dtypes)
    bad = failures(report)
    report["failures"] = bad
    print(json.dumps(report))
    print(summary(report))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
